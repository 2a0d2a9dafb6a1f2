"""The paper's loop around the model (Figure 3): impression and event logs from the server, the label join, daily
warm-started retraining, the A/B split, and the online experiment on the simulator."""
