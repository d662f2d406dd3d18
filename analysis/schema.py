"""Which results.json keys say what a run is, which are its outputs, and which are labels."""

from __future__ import annotations

from src.results import METRICS as METRICS_LOG  # noqa: F401  (METRICS here: the metric keys)
from src.results import RESULTS  # noqa: F401

# Aggregated over seeds (mean, std with ddof=1, n).
METRICS = (
    "final_test_acc", "best_test_acc", "final_test_ece", "final_test_loss", "final_memorized",
    "final_recovered", "best_val_acc", "test_acc_at_best_val", "noise_rate_realized",
    "train_time_s",
)
# Per-run outputs that are not averaged; never part of a run's identity.
OTHER_OUTPUTS = ("best_epoch", "epochs_done", "images_per_s", "eval_time_s")
# Bookkeeping. `augmentation` is the config's name only: α = ε = 0 under `mixup_smoothing`
# is the same training as `none`, so the numbers (and `method`) say what a run is.
# `config_fingerprint` hashes the whole config, seed included: an identity, not a setting.
META = (
    "status", "error", "experiment", "group", "run_dir", "augmentation", "device", "amp",
    "started_at", "finished_at", "results_mtime", "config_fingerprint", "trained_with_seeds",
)
NOT_CONFIG = frozenset(METRICS + OTHER_OUTPUTS + META)

# Always grouped on (even when constant) so the tables say what they hold.
BASE_KEYS = (
    "dataset", "model", "noise", "noise_rate", "noise_label_set", "method", "mixup_alpha",
    "smoothing", "epochs",
)
# Config keys of the results contract; any other one is reported when it splits groups.
KNOWN_CONFIG = frozenset(BASE_KEYS + ("seed", "noise_seed", "val_fraction"))
# What the ε × α grid is indexed by; the rest of the group keys make a panel.
GRID_KEYS = ("method", "mixup_alpha", "smoothing")
# A results.json without these cannot be placed in any table.
REQUIRED = ("status", "dataset", "model", "mixup_alpha", "smoothing", "noise", "noise_rate",
            "seed", "epochs")
REQUIRED_COMPLETED = ("final_test_acc",)
STATUSES = ("completed", "failed", "diverged", "interrupted")


def config_columns(columns) -> list[str]:
    """The columns that define a run (with the seed): every key not an output or a label."""
    # Unknown keys count as config, so a setting added later is never averaged across.
    return [c for c in columns if c not in NOT_CONFIG and not str(c).startswith("_")]
