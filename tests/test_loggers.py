"""W&B logging (src.run.loggers) read from the offline run's own file; src.tools.wandb_sync."""

from __future__ import annotations

import json
import logging
import struct
import sys
import types
from pathlib import Path

import pytest

from src.run import loggers
from src.run.loggers import make_logger, metric_key, run_name, summary_metrics
from src.tools import wandb_sync

IDENTITY = {"experiment": "quickstart", "group": "augmentation.mixup_alpha=0.4,noise.rate=0.4",
            "dataset": "digits", "model": "cnn", "augmentation": "mixup_smoothing",
            "method": "mixup_smoothing", "mixup_alpha": 0.4, "smoothing": 0.1,
            "noise": "symmetric", "noise_rate": 0.4, "noise_label_set": None, "seed": 1}


def test_run_name_reads_like_the_study():
    assert run_name(IDENTITY) == "quickstart/mixup_smoothing/a0.4/e0.1/symmetric0.4/s1"
    clean = {**IDENTITY, "noise_rate": 0.0}
    assert run_name(clean) == "quickstart/mixup_smoothing/a0.4/e0.1/s1"
    erm = {**IDENTITY, "method": "none", "mixup_alpha": 0.0, "smoothing": 0.0, "noise": "none",
           "noise_rate": 0.0, "seed": 0}
    assert run_name(erm) == "quickstart/none/a0/e0/s0"
    human = {**IDENTITY, "noise": "human", "noise_label_set": "worse", "noise_rate": 0.4}
    assert run_name(human) == "quickstart/mixup_smoothing/a0.4/e0.1/human-worse/s1"
    assert run_name("given/name") == "given/name"


def test_metric_sections_and_summary_names():
    assert [metric_key(k) for k in ("epoch", "train_loss", "train_acc_clean_subset", "val_acc",
                                    "test_ece", "lr", "memorized", "images_per_s", "other")] \
        == ["epoch", "train/loss", "train/acc_clean_subset", "val/acc", "test/ece", "train/lr",
            "noise/memorized", "perf/images_per_s", "other"]
    summary = summary_metrics({"final_test_acc": 0.8, "best_test_acc": 0.85, "best_epoch": 2,
                               "best_val_acc": None, "status": "completed", "seed": 1})
    assert summary == {"test/acc_final": 0.8, "test/acc_best": 0.85,
                       "test/acc_best_epoch": 2, "status": "completed"}


# --- reading a .wandb file: LevelDB's log format around W&B's protobuf records --------------

def read_wandb_records(path: Path) -> list:
    """Every record of a .wandb file, parsed with W&B's own protobuf (wandb.proto). The file is
    W&B's 7-byte header (":W&B", magic, version), then LevelDB log blocks of 32 KiB whose
    chunks (crc32, length, type FULL/FIRST/MIDDLE/LAST) carry one serialised Record each."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _by_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


ROWS = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "lr": 0.1,
         "test_loss": 0.9 / e, "test_acc": 0.6 + e / 10, "test_ece": 0.05, "val_loss": 1.0,
         "val_acc": 0.55 + e / 10, "memorized": 0.2, "recovered": 0.7, "epoch_time_s": 1.0,
         "images_per_s": 9000.0} for e in (1, 2, 3)]
RESULTS = {"status": "completed", "final_test_acc": 0.9, "best_test_acc": 0.9, "best_epoch": 3,
           "final_test_loss": 0.3, "final_test_ece": 0.05, "best_val_acc": 0.85,
           "test_acc_at_best_val": 0.9, "final_memorized": 0.2, "final_recovered": 0.7,
           "train_time_s": 3.0, "images_per_s": 9000.0, **IDENTITY}
CONFIG = {"dataset": {"name": "digits", "val_fraction": 0.2}, "augmentation": {
    "name": "mixup_smoothing", "mixup_alpha": 0.4, "smoothing": 0.1}, "trainer": {"seed": 1}}


def test_offline_run_reads_well(tmp_path, monkeypatch, capfd):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # the quiet must come from the logger
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run_dir = tmp_path / "quickstart" / "cell" / "seed=1"
    logger = make_logger({"name": "wandb", "mode": "offline", "project": "p",
                          "group": "quickstart", "tags": []}, CONFIG, IDENTITY, str(run_dir))
    for row in ROWS:
        logger.log_epoch(row)
    logger.finish(RESULTS, "completed")

    out = capfd.readouterr()
    assert "wandb" not in (out.out + out.err).lower()  # W&B's ~34 console lines are gone
    (run,) = list((run_dir / "wandb").glob("offline-run-*"))  # in the run's own folder
    records = read_wandb_records(next(run.glob("*.wandb")))

    header = _by_type(records, "run")[0]
    assert header.display_name == "quickstart/mixup_smoothing/a0.4/e0.1/symmetric0.4/s1"
    assert header.run_group == "quickstart"
    config = {u.key: json.loads(u.value_json) for u in header.config.update}
    assert config["augmentation"] == CONFIG["augmentation"]  # nested, as resolved
    assert config["run"]["method"] == "mixup_smoothing"  # the identity, to filter on

    metrics = {m.name or m.glob_name: m.step_metric for m in _by_type(records, "metric")}
    assert metrics["*"] == "epoch"

    history = [{i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                for i in h.item} for h in _by_type(records, "history")]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"train/loss", "train/acc", "train/lr", "val/acc", "val/loss", "test/acc",
            "test/ece", "noise/memorized", "noise/recovered", "perf/images_per_s"} \
        <= set(history[0])
    assert not set(history[0]) & (set(ROWS[0]) - {"epoch"})  # no key left outside a section

    summary = {}
    for s in _by_type(records, "summary"):
        for u in s.update:
            summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    assert summary["test/acc_final"] == 0.9 and summary["test/acc_best"] == 0.9
    assert summary["test/acc_best_epoch"] == 3 and summary["val/acc_best"] == 0.85
    assert summary["noise/memorized_final"] == 0.2 and summary["status"] == "completed"
    assert "seed" not in summary  # the identity is config, not a result
    (exit_record,) = _by_type(records, "exit")
    assert exit_record.exit_code == 0


class _FakeRun:
    url = "https://wandb.example/run"

    def __init__(self) -> None:
        self.summary: dict = {}
        self.logged: list[dict] = []

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, row: dict) -> None:
        self.logged.append(row)

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


def test_unreachable_server_goes_offline_and_says_how_to_upload(tmp_path, monkeypatch, caplog):
    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        if kwargs["mode"] == "online":
            raise ConnectionError("no route to host")
        return _FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=init, Settings=lambda **kw: kw))
    monkeypatch.setattr(loggers, "_SERVER_DOWN", False)
    caplog.set_level(logging.INFO, logger="src.run.loggers")
    cfg = {"name": "wandb", "mode": "online", "project": "p"}
    make_logger(cfg, {}, IDENTITY, str(tmp_path / "a"))
    assert [c["mode"] for c in calls] == ["online", "offline"]
    assert all(c["settings"]["silent"] for c in calls)
    assert "python -m src.tools.wandb_sync" in caplog.text
    make_logger(cfg, {}, IDENTITY, str(tmp_path / "b"))  # the next job does not wait again
    assert [c["mode"] for c in calls] == ["online", "offline", "offline"]


def test_failed_run_finishes_with_an_error_exit_code(tmp_path, monkeypatch):
    run = _FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=lambda **kw: run, Settings=lambda **kw: kw))
    logger = make_logger({"name": "wandb", "mode": "offline"}, {}, IDENTITY, str(tmp_path))
    logger.log_epoch(ROWS[0])
    logger.finish({"final_test_acc": 0.5, "error": "boom"}, "failed")
    assert run.logged[0]["test/acc"] == ROWS[0]["test_acc"]
    assert run.summary == {"test/acc_final": 0.5, "status": "failed", "error": "boom"}
    assert run.exit_code == 1


# --- uploading: src.tools.wandb_sync -----------------------------------------------------------

def _offline_run(parent: Path, name: str, synced: bool = False) -> Path:
    run = parent / "wandb" / name
    run.mkdir(parents=True)
    (run / f"run-{name[-8:]}.wandb").write_bytes(b":W&B")
    if synced:
        (run / f"run-{name[-8:]}.wandb.synced").touch()
    return run


def test_sync_finds_every_offline_run_under_a_study(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study"
    a = _offline_run(study / "cell_a" / "seed=0", "offline-run-20260101_000000-aaaaaaaa")
    b = _offline_run(study / "cell_b" / "seed=1", "offline-run-20260101_000001-bbbbbbbb")
    done = _offline_run(study / "cell_b" / "seed=2", "offline-run-20260101_000002-cccccccc",
                        synced=True)
    (study / "cell_c" / "wandb" / "offline-run-empty").mkdir(parents=True)  # no .wandb file
    assert wandb_sync.find_offline_runs([study]) == sorted(p.resolve() for p in (a, b, done))

    calls: list[list[str]] = []
    monkeypatch.setattr(wandb_sync.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert wandb_sync.main([str(study), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert str(a.resolve()) in listed and str(b.resolve()) in listed
    assert "1 already uploaded" in listed and str(done.resolve()) not in listed
    assert calls == []  # a dry run uploads nothing

    assert wandb_sync.main([str(study)]) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "wandb", "sync"] and cmd[4:] == [str(a.resolve()),
                                                               str(b.resolve())]
    assert wandb_sync.main([str(study), "--include-synced"]) == 0
    assert str(done.resolve()) in calls[1] and calls[1][-1] == "--include-synced"


def test_sync_refuses_a_missing_folder_and_says_when_nothing_is_left(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        wandb_sync.main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "expected an existing folder" in capsys.readouterr().err
    assert wandb_sync.main([str(tmp_path)]) == 0
    assert "No offline W&B runs to upload" in capsys.readouterr().out
