"""What noise injection leaves behind: the result object, its transition counts, the run's
noise records on disk, and the memorisation / recovery metrics of a trained model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.errors import ConfigError

NOISE_JSON = "noise.json"
NOISE_LABELS = "noise_labels.npz"


@dataclass(frozen=True)
class NoiseResult:
    """Training labels after noise injection, with the true labels and summary counts."""

    given_labels: np.ndarray  # int64, what the model trains on
    true_labels: np.ndarray  # int64, the dataset's labels
    corrupted: np.ndarray  # bool, given != true
    realized_rate: float  # corrupted.mean()
    transition_matrix: np.ndarray  # (K, K) int64 counts, row = true class, column = given


def transition_matrix(true_labels: np.ndarray, given_labels: np.ndarray,
                      num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = given label."""
    true = np.asarray(true_labels, dtype=np.int64)
    given = np.asarray(given_labels, dtype=np.int64)
    if true.shape != given.shape or true.ndim != 1:
        raise ConfigError("labels", f"{true.shape} vs {given.shape}", "two 1-D arrays, same size")
    for arr in (true, given):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ConfigError("dataset.num_classes", num_classes, "greater than every label")
    flat = np.bincount(true * num_classes + given, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def noise_result(true: np.ndarray, given: np.ndarray, k: int) -> NoiseResult:
    """Package labels with their corruption mask, rate and transition counts."""
    given = given.astype(np.int64)
    corrupted = given != true
    rate = float(corrupted.mean()) if corrupted.size else 0.0
    return NoiseResult(given, true, corrupted, rate, transition_matrix(true, given, k))


def save_noise(result: NoiseResult, run_dir: str | Path, cfg: Mapping[str, Any]) -> None:
    """Write run_dir/noise.json (rate, matrix, config) and run_dir/noise_labels.npz, atomically."""
    from src.files import atomic_write, write_json_atomic  # the writers every record uses

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "realized_rate": result.realized_rate,
        "transition_matrix": result.transition_matrix.tolist(),
        "noise": _plain(cfg),
        "num_samples": int(result.given_labels.size),
        "num_corrupted": int(result.corrupted.sum()),
    }
    write_json_atomic(run_dir / NOISE_JSON, record)
    atomic_write(run_dir / NOISE_LABELS, lambda f: np.savez(
        f, given_labels=result.given_labels, true_labels=result.true_labels,
        corrupted=result.corrupted), binary=True)


def _plain(value: Any) -> Any:
    """A config (DictConfig, dict, lists, numpy scalars, paths) as JSON-ready builtins."""
    if isinstance(value, Mapping):
        return {str(key): _plain(value[key]) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # ListConfig too
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def noise_metrics(
    pred: np.ndarray, given_labels: np.ndarray, true_labels: np.ndarray
) -> dict[str, float | None]:
    """Fit on intact labels, and memorisation vs recovery of corrupted labels."""
    pred, given, true = (np.asarray(a).ravel() for a in (pred, given_labels, true_labels))
    if not pred.shape == given.shape == true.shape:
        raise ConfigError("labels", f"{pred.shape}, {given.shape}, {true.shape}",
                          "pred, given and true labels of one size")
    clean = given == true
    noisy = ~clean
    return {
        "train_acc_clean_subset": _mean_or_none(pred[clean] == given[clean]),
        "memorized": _mean_or_none(pred[noisy] == given[noisy]),
        "recovered": _mean_or_none(pred[noisy] == true[noisy]),
    }


def _mean_or_none(hits: np.ndarray) -> float | None:
    """Mean of a boolean array, None when it is empty."""
    return float(hits.mean()) if hits.size else None
