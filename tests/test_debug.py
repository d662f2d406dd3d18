"""debug=fast | overfit | profile (conf/debug/): what each makes of a run on the digits."""

from __future__ import annotations

import json

import pytest

from src.config.validate import validate
from src.files import read_json
from src.run.records import read_metrics
from src.train import train
from tests.conftest import CONF, make_cfg, run_module

DEBUG = ["fast", "overfit", "profile"]


def _run(tmp_path, name, *overrides):
    run_dir = tmp_path / "run"
    results = train(make_cfg([f"debug={name}", "trainer.progress=false", *overrides],
                             run_dir=run_dir))
    return results, run_dir


@pytest.mark.parametrize("name", DEBUG)
def test_each_debug_config_composes_onto_a_run_and_the_command_line_wins(name, tmp_path):
    assert (CONF / "debug" / f"{name}.yaml").read_text().startswith("# @package _global_\n")
    cfg = make_cfg([f"debug={name}"], run_dir=tmp_path)
    validate(cfg)
    assert cfg.task_name == "debug" and cfg.logger.name == "none"  # apart from studies, offline
    assert make_cfg([f"debug={name}", "trainer.epochs=2"]).trainer.epochs == 2
    assert make_cfg([f"debug={name}", "logger=wandb"]).logger.name == "wandb"


def test_fast_runs_every_stage_once(tmp_path):
    res, run_dir = _run(tmp_path, "fast")
    assert res["status"] == "completed" and res["epochs_done"] == 1
    assert res["best_val_acc"] is not None  # the validation split was evaluated
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 1
    assert (run_dir / "checkpoint.pt").is_file()


def test_overfit_fits_one_batch(tmp_path):
    res, run_dir = _run(tmp_path, "overfit")
    cfg = make_cfg(["debug=overfit"])
    assert res["status"] == "completed"
    # One batch an epoch, the same images every epoch.
    images = res["images_per_s"] * res["train_time_s"]
    assert round(images) == cfg.trainer.epochs * cfg.trainer.batch_size
    last = read_metrics(run_dir / "metrics.jsonl")[-1]
    assert last["train_acc"] == 1.0 and last["train_loss"] < 0.05
    assert last["train_acc_clean_subset"] == 1.0  # the whole (cut) split, predicted again


def test_profile_writes_a_trace_of_three_training_steps_into_the_run_folder(tmp_path):
    res, run_dir = _run(tmp_path, "profile")
    assert res["status"] == "completed"
    events = json.loads((run_dir / "trace.json").read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert len({n for n in names if n.startswith("ProfilerStep#")}) == 3
    assert "aten::convolution" in names  # the model's own operators
    assert "Self CPU" in (run_dir / "profile.txt").read_text()


@pytest.mark.slow
def test_python_m_src_train_debug_fast(tmp_path):
    done = run_module(["debug=fast", "trainer.progress=false"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    [results] = (tmp_path / "outputs" / "debug").glob("*/results.json")
    assert read_json(results)["status"] == "completed"
