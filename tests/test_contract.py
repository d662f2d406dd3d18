"""The results contract is written once (src.run.records) and everything else follows it:
the documentation, what a run writes, and the analysis's metric names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.schema import METRICS
from src.files import read_json
from src.run.records import EPOCH_FIELDS, OPTIONAL_FIELDS, RESULT_FIELDS, read_metrics
from src.train import train
from tests.conftest import ROOT, TINY, make_cfg

DOC = (ROOT / "docs" / "results.md").read_text()


def documented_result_keys() -> list[str]:
    section = DOC.split("## `results.json`")[1].split("## ")[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)


def test_the_documented_fields_are_the_contract():
    assert documented_result_keys() == [f.name for f in RESULT_FIELDS]
    section = DOC.split("## `metrics.jsonl`")[1].split("## ")[0]
    assert re.findall(r"`([a-z_]+)`", section)[:len(EPOCH_FIELDS)] == list(EPOCH_FIELDS)


def test_a_run_writes_exactly_the_contract(tmp_path: Path):
    cfg = make_cfg(TINY + ["dataset.val_fraction=0.2"], run_dir=tmp_path)
    train(cfg)
    written = read_json(tmp_path / "results.json")
    expected = [f.name for f in RESULT_FIELDS if f not in OPTIONAL_FIELDS]
    assert list(written) == expected
    for row in read_metrics(tmp_path / "metrics.jsonl"):
        assert set(row) <= set(EPOCH_FIELDS)
    assert {"test_ece_ts", "temperature"} <= set(row)  # the last epoch has them


def test_every_output_field_is_an_output_to_the_analysis():
    """A field the analysis does not know counts as a setting and splits cells: every field a
    run measures (or that says how it ran) must be known as such, or each run is its own cell."""
    from analysis.schema import NOT_CONFIG
    from src.run.records import CLOSING_FIELDS, SUMMARY_FIELDS, TIMING_FIELDS

    outputs = {f.name for f in TIMING_FIELDS + SUMMARY_FIELDS + CLOSING_FIELDS + OPTIONAL_FIELDS}
    outputs |= {"status", "error", "run_dir", "device", "amp", "threads", "started_at",
                "config_fingerprint"}
    assert outputs <= set(NOT_CONFIG), outputs - set(NOT_CONFIG)


def test_every_aggregated_metric_is_a_result_field():
    names = {f.name for f in RESULT_FIELDS}
    assert set(METRICS) <= names, set(METRICS) - names


def test_ece_agrees_with_torchmetrics():
    """The suite computes ECE itself (on the device, for K stacked members at once, with no
    host sync inside training); torchmetrics' implementation is the cross-check."""
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    from src.training.evaluate import calibration_metrics, classification_metrics

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g) * 3
    labels = torch.randint(0, 7, (500,), generator=g)
    ours = classification_metrics(logits, labels)["ece"]
    ref = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(logits.softmax(-1),
                                                                           labels)
    assert ours == pytest.approx(float(ref), abs=1e-6)
    parts = calibration_metrics(logits, labels)
    assert parts["ece_over"] + parts["ece_under"] == pytest.approx(ours, abs=1e-6)
