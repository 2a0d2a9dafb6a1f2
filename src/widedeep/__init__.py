"""widedeep: the Wide & Deep recommender system (Cheng et al. 2016), from logs to a ranking API."""

__version__ = "0.1.0"
