"""DVT's cascade for video (Wang et al., NeurIPS 2021): TimeSformers of increasing token counts
with early exit (``model``), the feature and relation reuse between stages (``reuse``) and
the exit thresholds for a compute budget (``calibration``). Above the models and the
reducers: a stage may carry a reducer."""
