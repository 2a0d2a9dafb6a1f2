"""The paper's loop around the model (Figure 3), downstream of serving: the label join of the server's impression and
event logs (`join`), daily warm-started retraining (`retrain`), the A/B report (`abreport`), and the online experiment
on the simulator (`simulate`). The server's side of the loop (the logs, the A/B arms) lives in `widedeep.serve`."""
