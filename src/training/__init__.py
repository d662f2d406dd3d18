"""The training stage: device and precision, models of a sweep, the optimisation step, the
trainer for K >= 1 members, evaluation metrics and checkpoints."""
