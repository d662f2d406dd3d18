"""Which results.json keys say what a run is, which are its outputs, and which are labels."""

from __future__ import annotations

from src.config import REPLICATES
from src.run.records import METRICS as METRICS_LOG  # noqa: F401  (METRICS here: the metric keys)
from src.run.records import RESULT_FIELDS, RESULTS  # noqa: F401

# Aggregated over seeds (mean, std with ddof=1, n).
METRICS = (
    "final_test_acc", "best_test_acc", "final_test_ece", "final_test_loss", "final_memorized",
    "final_recovered", "best_val_acc", "final_val_acc", "test_acc_at_best_val",
    "noise_rate_realized",
    "train_time_s",
    # The mean test accuracy of the last trainer.last_k epochs, as Co-teaching's and JoCoR's
    # tables report (--metric test_acc_last_k).
    "test_acc_last_k",
    # Calibration at the last epoch: negative log-likelihood, Brier score, the over- and
    # under-confident parts of ECE, and ECE after temperature scaling (Guo et al., ICML 2017)
    # with the temperature fitted on the noisy validation split.
    "final_test_nll", "final_test_brier", "final_test_ece_over", "final_test_ece_under",
    "final_test_ece_ts",
)
# Per-run outputs that are not averaged; never part of a run's identity.
OTHER_OUTPUTS = ("best_epoch", "epochs_done", "images_per_s", "eval_time_s",
                 "final_temperature")
# Bookkeeping. `augmentation` is the config's name only: α = ε = 0 under `mixup_smoothing`
# is the same training as `none`, so the numbers (and `method`) say what a run is.
# `config_fingerprint` hashes the whole config, seed included: an identity, not a setting.
META = (
    "status", "error", "experiment", "group", "run_dir", "augmentation", "device", "amp", "threads",
    "started_at", "finished_at", "results_mtime", "config_fingerprint", "trained_with_seeds",
    "trained_with",
)
# Replicates of one setting, by the results fields they are recorded as (src.config.REPLICATES).
REPLICATE_KEYS = tuple(REPLICATES.values())
NOT_CONFIG = frozenset(METRICS + OTHER_OUTPUTS + META + REPLICATE_KEYS)

# The nested objects of results.json, flattened into one column per key by the loader:
# `config` (every training setting, dotted keys) and `inputs` (the content hash of each file
# the run read, by the config key that named it).
CONFIG = "config"
INPUTS = "inputs"
CONFIG_PREFIX = "config."
INPUT_PREFIX = "input."
# Config keys that repeat a top-level results key: the top-level key is the column, and the
# copy is dropped where it says nothing more (see load.py).
CONFIG_MIRRORS = {
    "dataset.name": "dataset", "model.name": "model", "augmentation.mixup_alpha": "mixup_alpha",
    "augmentation.smoothing": "smoothing", "augmentation.smoothing_to": "smoothing_to",
    "noise.name": "noise", "noise.rate": "noise_rate", "noise.label_set": "noise_label_set",
    "trainer.epochs": "epochs", "dataset.val_fraction": "val_fraction",
}
# Config keys that are not settings: replicate seeds, the augmentation's name (see META), and
# where data lives (a file's content is a setting through its hash in `inputs`, its path not).
CONFIG_NOT_SETTINGS = frozenset({"trainer.seed", "noise.seed", "augmentation.name",
                                 "dataset.root", "dataset.download"})

# Results written before the smoothing convention was recorded used s(y) = (1 - ε) y + ε / K
# (src/data/crop_flip.py then): smoothing over all classes, whose uniform mass is ε itself.
LEGACY_SMOOTHING_TO = "all"

# Always grouped on (even when constant) so the tables say what they hold.
BASE_KEYS = (
    "dataset", "model", "noise", "noise_rate", "noise_label_set", "method", "mixup_alpha",
    "smoothing", "smoothing_to", "smoothing_uniform_mass", "epochs",
)
# Config keys of the results contract; any other top-level key is reported when it splits
# groups (the flattened `config.*` and `input.*` columns are settings by contract).
KNOWN_CONFIG = frozenset(BASE_KEYS + REPLICATE_KEYS + ("val_fraction",))
# What the ε × α grid is indexed by; the rest of the group keys make a panel. The uniform mass
# is a function of ε within a panel (its convention and class count are panel keys).
GRID_KEYS = ("method", "mixup_alpha", "smoothing", "smoothing_uniform_mass")
# The two row axes of a table: ε as configured, or the uniform mass m of (1 - m) y + m / K.
EPS_AXES = {"smoothing": "smoothing", "uniform_mass": "smoothing_uniform_mass"}
# A results.json without these cannot be placed in any table.
REQUIRED = ("status", "dataset", "model", "mixup_alpha", "smoothing", "noise", "noise_rate",
            "seed", "epochs")
REQUIRED_COMPLETED = ("final_test_acc",)
STATUSES = ("completed", "failed", "diverged", "interrupted")
# The statuses that are training outcomes, and so enter means and comparisons: a run that
# diverged trained as configured and collapsed (analysis.outcomes says what it counts as);
# a failed or interrupted run says nothing about its setting.
ANALYSED = ("completed", "diverged")
# The accuracies: metrics with a chance level, 1 / K (what a diverged run counts as).
CHANCE_METRICS = ("final_test_acc", "best_test_acc", "best_val_acc", "final_val_acc",
                  "test_acc_at_best_val", "test_acc_last_k")
# Of those, the ones measured on (or picked with) the noisy validation split: only runs with one
# (val_fraction > 0) have them.
VALIDATION_METRICS = ("best_val_acc", "final_val_acc", "test_acc_at_best_val")
# Which validation accuracy picks a "best" cell for a reported metric: the one measured at the
# epoch the metric is read from. A metric read at the best validation epoch is picked on
# `best_val_acc`; every other (the last epoch, the mean of the last k) on `final_val_acc`.
# Picking a last-epoch metric on best_val_acc would reward early epochs the reported number
# never sees, and settings that only change training after a warm-up (negative ε switched on
# at epoch 8) share the warm-up's best epoch with ε = 0, so they would tie or win by it.
PICKED_ON_BEST_VAL = ("test_acc_at_best_val", "best_test_acc")
# Where a run records K, the number of classes, first found first: the dataset's setting in
# `config` (flattened by the loader), or a top-level key.
NUM_CLASSES = (CONFIG_PREFIX + "dataset.num_classes", "num_classes")
# Text fields of the results contract (and the loader's own): read back from a runs table
# (runs.csv) as text, so that an experiment named 2024 or a hash of digits stays what it was.
TEXT_COLUMNS = frozenset({f.name for f in RESULT_FIELDS if f.type.startswith("str")}
                         | {"results_mtime"})


def config_columns(columns) -> list[str]:
    """The columns that define a setting (replicate seeds excluded): every key not an output,
    a label or a replicate key."""
    # Unknown keys count as config, so a setting added later is never averaged across.
    return [c for c in columns if c not in NOT_CONFIG and not str(c).startswith("_")]


def is_recorded_setting(column: str) -> bool:
    """A setting the results contract names: a known key or a flattened config/input key."""
    return column in KNOWN_CONFIG or str(column).startswith((CONFIG_PREFIX, INPUT_PREFIX))
