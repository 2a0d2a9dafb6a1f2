"""The reliability suite's areas (`benchmarks/reliability.py` runs them): kills, tamper, bad_data, http_fuzz, hot_swap."""
