"""Run records: the results contract (the fields of results.json, written once here), the
per-epoch metrics log, and the atomic writers behind every file a run writes.

docs/results.md documents these fields; a test checks it against RESULT_FIELDS, and the
analysis (analysis/schema.py) reads its metric names from here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.files import atomic_write, clean_json

RESULTS = "results.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Field:
    """One key of results.json: its name, JSON type and meaning (docs/results.md)."""

    name: str
    type: str
    meaning: str


# In the order a run writes them: who the run is, how it ran, what it measured.
IDENTITY_FIELDS: tuple[Field, ...] = (
    Field("status", "str", "completed, failed, diverged or interrupted"),
    Field("error", "str or null", "the error when status is failed, diverged or interrupted"),
    Field("experiment", "str", "the study (task_name)"),
    Field("group", "str", "the sweep cell without the seed"),
    Field("run_dir", "str", "the run's output directory"),
    Field("dataset", "str", "dataset name"),
    Field("model", "str", "model name"),
    Field("augmentation", "str", "the augmentation config chosen"),
    Field("method", "str", "what the values make of it: none, mixup, manifold_mixup, cutmix or "
          "mixup_cutmix, with _smoothing added when eps != 0 (smoothing alone: smoothing)"),
    Field("mixup_alpha", "float", "Mixup alpha (0 = off)"),
    Field("smoothing", "float", "label smoothing eps (0 = off)"),
    Field("smoothing_to", "str", "the smoothing convention: all (eps/K on every class) or "
          "others (eps/(K-1) on the other classes)"),
    Field("smoothing_uniform_mass", "float", "the uniform mass in the eps/K form (eps for all, "
          "eps*K/(K-1) for others): comparable across conventions"),
    Field("noise", "str", "noise model"),
    Field("noise_rate", "float", "requested noise rate (for human noise, the realised rate)"),
    Field("noise_seed", "int", "seed the noise was drawn from"),
    Field("noise_label_set", "str or null", "CIFAR-10N label set for human noise"),
    Field("seed", "int", "training seed"),
    Field("epochs", "int", "epochs configured"),
    Field("val_fraction", "float", "fraction of the training set held out for validation"),
    Field("noise_rate_realized", "float", "fraction of training labels that differ from the "
          "true ones"),
    Field("device", "str", "where the run executed"),
    Field("amp", "str", "autocast precision: bf16, fp16 or off"),
    Field("threads", "int", "torch CPU threads at the start (trainer.threads; auto re-counts "
          "the jobs sharing the cores every epoch)"),
    Field("started_at", "str", "ISO 8601 start time"),
    Field("config_fingerprint", "str", "hash of the settings that define the numbers and of "
          "the content of every input file"),
    Field("inputs", "object", "every input file by the config key naming it: {path, size, "
          "hash} (BLAKE2b of the content; a folder: of every file in it)"),
    Field("config", "object", "every setting that changes the numbers, as dotted keys "
          "(trainer.lr, model.channels, ...); not the seeds, device, logging or paths"),
)
TIMING_FIELDS: tuple[Field, ...] = (
    Field("train_time_s", "float", "seconds spent in training steps"),
    Field("eval_time_s", "float", "seconds spent evaluating"),
    Field("images_per_s", "float", "training images per second"),
)
SUMMARY_FIELDS: tuple[Field, ...] = (
    Field("final_test_acc", "float", "test accuracy at the last evaluated epoch"),
    Field("best_test_acc", "float", "test accuracy at the best evaluated epoch (optimistic: "
          "picked on test)"),
    Field("best_epoch", "int", "epoch of best_test_acc"),
    Field("test_acc_last_k", "float", "mean test accuracy over the last trainer.last_k (10) "
          "evaluated epochs, the number Co-teaching's and JoCoR's tables report"),
    Field("final_test_loss", "float", "test cross entropy at the last epoch"),
    Field("final_test_ece", "float", "15-bin expected calibration error at the last epoch"),
    Field("final_memorized", "float or null", "last epoch: fraction of corrupted training "
          "samples predicted as their corrupted label"),
    Field("final_recovered", "float or null", "last epoch: fraction of corrupted training "
          "samples predicted as their true label"),
    Field("best_val_acc", "float or null", "best accuracy on the noisy validation split"),
    Field("final_val_acc", "float or null", "accuracy on the noisy validation split at the "
          "last epoch: what picks among cells whose final_test_acc is compared (best_val_acc "
          "is the early-stopping pick, for test_acc_at_best_val)"),
    Field("test_acc_at_best_val", "float or null", "test accuracy at the epoch of "
          "best_val_acc"),
    Field("final_test_nll", "float", "test negative log-likelihood at the last epoch (the "
          "cross entropy of final_test_loss)"),
    Field("final_test_brier", "float", "test Brier score at the last epoch"),
    Field("final_test_ece_over", "float", "the over-confident part of final_test_ece (bins "
          "where confidence exceeds accuracy)"),
    Field("final_test_ece_under", "float", "the under-confident part of final_test_ece"),
    Field("final_test_ece_ts", "float or null", "test ECE after temperature scaling fitted "
          "on the noisy validation split (null without one)"),
    Field("final_temperature", "float or null", "that temperature"),
)
CLOSING_FIELDS: tuple[Field, ...] = (
    Field("epochs_done", "int", "epochs actually trained"),
    Field("finished_at", "str", "ISO 8601 end time"),
)
# Only where it applies.
OPTIONAL_FIELDS: tuple[Field, ...] = (
    Field("trained_with_seeds", "str", "seeds trained together as one batched model "
          "(trainer.parallel_seeds), e.g. 0,1,2; their times are the job's, shared"),
    Field("trained_with", "str", "runs trained together as one batched model (parallel_seeds "
          "or hydra/launcher=batched): how many, the keys they differ in and the batch's id, the "
          "same in each of its runs; their times are the batch's, shared"),
)
RESULT_FIELDS: tuple[Field, ...] = (IDENTITY_FIELDS + TIMING_FIELDS + SUMMARY_FIELDS
                                   + CLOSING_FIELDS + OPTIONAL_FIELDS)
# The per-epoch keys of metrics.jsonl.
EPOCH_FIELDS: tuple[str, ...] = (
    "epoch", "train_loss", "train_acc", "lr", "test_loss", "test_acc", "test_ece", "test_brier",
    "test_ece_over", "test_ece_under", "val_loss", "val_acc", "train_acc_clean_subset",
    "memorized", "recovered", "test_ece_ts", "temperature", "epoch_time_s", "images_per_s",
    "threads", "mix_layer_counts",
)


def summarise(history: list[dict[str, Any]], last_k: int = 10) -> dict[str, Any]:
    """The summary fields of a run from its per-epoch records (empty without any)."""
    if not history:
        return {}
    last = history[-1]
    best = max(history, key=lambda r: r["test_acc"])
    tail = [r["test_acc"] for r in history[-last_k:]]
    out = {
        "final_test_acc": last["test_acc"], "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"], "test_acc_last_k": sum(tail) / len(tail),
        "final_test_loss": last["test_loss"],
        "final_test_ece": last["test_ece"], "final_memorized": last.get("memorized"),
        "final_recovered": last.get("recovered"), "best_val_acc": None, "final_val_acc": None,
        "test_acc_at_best_val": None, "final_test_nll": last["test_loss"],
        "final_test_brier": last.get("test_brier"), "final_test_ece_over":
        last.get("test_ece_over"), "final_test_ece_under": last.get("test_ece_under"),
        "final_test_ece_ts": last.get("test_ece_ts"), "final_temperature":
        last.get("temperature"),
    }
    with_val = [r for r in history if r.get("val_acc") is not None]
    if with_val:
        value = max(with_val, key=lambda r: r["val_acc"])
        out["best_val_acc"], out["test_acc_at_best_val"] = value["val_acc"], value["test_acc"]
        out["final_val_acc"] = last.get("val_acc")
    return out


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole metrics log atomically (it is small: one line per epoch)."""
    atomic_write(path, lambda f: f.writelines(json.dumps(clean_json(row)) + "\n" for row in rows))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a metrics log (an empty list when there is none)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def now_iso() -> str:
    """The local time with its offset, to the second: the timestamps of every record."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
