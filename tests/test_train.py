"""Real short training runs on the bundled digits: learning, the results contract, determinism."""

import json
import sys

import pytest

from src.files import read_json
from src.run.records import read_metrics
from src.train import train
from tests.conftest import TINY, make_cfg, run_module

RESULT_KEYS = {
    "status", "dataset", "model", "augmentation", "mixup_alpha", "smoothing", "noise",
    "noise_rate", "seed", "epochs", "final_test_acc", "best_test_acc", "best_epoch",
    "final_test_loss", "final_test_ece", "train_time_s", "images_per_s",
    "noise_rate_realized", "final_memorized", "final_recovered", "best_val_acc",
    "test_acc_at_best_val", "noise_seed", "method",
}
METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_ece", "lr",
               "epoch_time_s", "train_acc_clean_subset", "memorized", "recovered"}


def _train(tmp_path, overrides, name="run"):
    base = TINY
    if any(o.startswith("model=") for o in overrides):  # another model: drop the cnn's keys
        base = [o for o in TINY if not o.startswith("model")]
    res = train(make_cfg(base + overrides, run_dir=tmp_path / name))
    return res, tmp_path / name


def test_short_run_on_digits_learns_and_writes_the_contract(tmp_path):
    res, run_dir = _train(tmp_path, ["trainer.epochs=6", "model.channels=[16,32]"])
    assert res["status"] == "completed"
    assert res["final_test_acc"] > 0.8  # chance is 0.1
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert RESULT_KEYS <= set(on_disk)
    for key in ("final_test_acc", "best_test_acc", "final_test_ece"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["best_test_acc"] >= on_disk["final_test_acc"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert METRIC_KEYS <= set(rows[0])
    assert rows[-1]["test_acc"] == on_disk["final_test_acc"]
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_same_seed_same_numbers_bit_for_bit(tmp_path):
    over = ["augmentation=mixup_smoothing", "noise=symmetric", "noise.rate=0.3"]
    a, _ = _train(tmp_path, over, "a")
    b, _ = _train(tmp_path, over, "b")
    keys = ["final_test_acc", "final_test_loss", "final_test_ece", "final_memorized"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    ma = read_metrics(tmp_path / "a" / "metrics.jsonl")
    mb = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]


def test_other_seed_other_numbers(tmp_path):
    a, _ = _train(tmp_path, [], "a")
    b, _ = _train(tmp_path, ["trainer.seed=1"], "b")
    assert a["final_test_loss"] != b["final_test_loss"]


def test_alpha_zero_eps_zero_equals_erm(tmp_path):
    erm, _ = _train(tmp_path, ["augmentation=none"], "erm")
    mix, _ = _train(tmp_path, ["augmentation=mixup_smoothing", "augmentation.mixup_alpha=0",
                               "augmentation.smoothing=0"], "mix0")
    assert mix["method"] == "none"
    ma = read_metrics(tmp_path / "erm" / "metrics.jsonl")
    mb = read_metrics(tmp_path / "mix0" / "metrics.jsonl")
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]
    assert erm["final_test_loss"] == mix["final_test_loss"]


def test_mixup_and_smoothing_change_training(tmp_path):
    erm, _ = _train(tmp_path, ["augmentation=none"], "erm")
    mix, _ = _train(tmp_path, ["augmentation=mixup_smoothing"], "mix")
    assert mix["method"] == "mixup_smoothing" and mix["mixup_alpha"] == 1.0
    assert erm["final_test_loss"] != mix["final_test_loss"]


def test_noise_is_recorded_and_test_labels_untouched(tmp_path):
    res, run_dir = _train(tmp_path, ["noise=symmetric", "noise.rate=0.4"])
    assert res["noise_rate_realized"] == pytest.approx(0.4, abs=1e-3)
    noise = json.loads((run_dir / "noise.json").read_text())
    assert noise["realized_rate"] == pytest.approx(res["noise_rate_realized"])
    assert res["final_memorized"] is not None and res["final_recovered"] is not None


def test_validation_split_reports_val_accuracy(tmp_path):
    res, run_dir = _train(tmp_path, ["dataset.val_fraction=0.2", "noise=symmetric"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert all(0 <= r["val_acc"] <= 1 for r in rows)
    assert res["best_val_acc"] == max(r["val_acc"] for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])
    assert res["test_acc_at_best_val"] == best["test_acc"]


def test_eval_every_evaluates_on_schedule_and_at_the_end(tmp_path):
    _, run_dir = _train(tmp_path, ["trainer.epochs=5", "trainer.eval_every=2"])
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [2, 4, 5]


@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_other_models_train(tmp_path, model):
    res, _ = _train(tmp_path, [f"model={model}", "trainer.epochs=1"])
    assert res["status"] == "completed" and res["model"] == model


@pytest.mark.parametrize("schedule,optimizer", [("multistep", "sgd"), ("constant", "adamw")])
def test_schedules_and_optimizers(tmp_path, schedule, optimizer):
    res, run_dir = _train(tmp_path, [f"trainer.schedule={schedule}",
                                     f"trainer.optimizer={optimizer}", "trainer.lr=0.01",
                                     "trainer.epochs=4", "trainer.milestones=[0.5]"])
    lrs = [r["lr"] for r in read_metrics(run_dir / "metrics.jsonl")]
    if schedule == "constant":
        assert lrs == [0.01] * 4
    else:
        assert lrs[:2] == [0.01, 0.01] and lrs[2:] == pytest.approx([0.001, 0.001])


def test_completed_run_is_skipped_on_rerun(tmp_path):
    res, run_dir = _train(tmp_path, [])
    before = (run_dir / "results.json").stat().st_mtime_ns
    again, _ = _train(tmp_path, [])
    assert again == read_json(run_dir / "results.json")
    assert (run_dir / "results.json").stat().st_mtime_ns == before


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    res, run_dir = _train(tmp_path, ["logger=wandb", "logger.mode=offline",
                                     f"logger.dir={tmp_path / 'wb'}"])
    assert res["status"] == "completed"
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_cli_default_run_and_bad_value(tmp_path):
    ok = run_module(TINY + ["trainer.epochs=1"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    results = list((tmp_path / "outputs" / "train").glob("*/results.json"))
    assert len(results) == 1 and read_json(results[0])["status"] == "completed"
    bad = run_module(["augmentation.smoothing=1.5"], cwd=tmp_path)
    assert bad.returncode != 0
    assert "augmentation.smoothing=1.5" in bad.stderr and "Traceback" not in bad.stderr
    assert len(list((tmp_path / "outputs" / "train").iterdir())) == 1  # nothing new left


def test_cli_multirun_writes_under_outputs(tmp_path):
    out = run_module(["-m"] + TINY + ["trainer.epochs=1", "trainer.seed=0,1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "multirun").exists()
    found = sorted(p.parent.name for p in (tmp_path / "outputs").rglob("results.json"))
    assert found == ["seed=0", "seed=1"]


def test_completed_run_of_another_config_is_not_skipped_silently(tmp_path):
    from src.errors import ConfigError

    _train(tmp_path, [])
    with pytest.raises(ConfigError, match="skip_completed"):
        _train(tmp_path, ["trainer.lr=0.01"])
    assert read_json(tmp_path / "run" / "results.json")["status"] == "completed"
    assert (tmp_path / "run" / "config.yaml").read_text().count("lr: 0.1") == 1


class _FakeRun:
    def __init__(self) -> None:
        self.summary: dict = {}

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, row: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def test_resumed_job_logs_into_its_own_wandb_run(tmp_path, monkeypatch):
    """A job continued from its checkpoint reuses its W&B run id (resume="allow"); a job that
    starts over gets a new run."""
    import types

    from src.run.loggers import WANDB_ID, make_logger

    inits: list[dict] = []
    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or _FakeRun(),
                                 Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = {"name": "wandb", "mode": "offline", "project": "p"}
    for resume in (False, True, False):
        make_logger(cfg, {}, "job", str(tmp_path), resume=resume)
    first, resumed, fresh = (kw["id"] for kw in inits)
    assert resumed == first and fresh != first
    assert all(kw["resume"] == "allow" for kw in inits)
    assert (tmp_path / WANDB_ID).read_text().strip() == fresh
