"""plan=true: a sweep's or a single run's plan, with nothing trained or written."""

from __future__ import annotations

import json
import math

from src.sweep.compose import setting_key
from src.sweep.plan import Estimate, duration
from tests.conftest import run_module

GRID = ["-m", "trainer.epochs=2", "model=cnn", "model.channels=[8,16]",
        "augmentation=mixup_smoothing", "augmentation.mixup_alpha=0,0.4",
        "augmentation.smoothing=0,0.1", "trainer.seed=0,1"]


def test_a_sweep_plan_shows_the_grid_the_runs_and_the_time_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = run_module([*GRID, f"hydra.sweep.dir={out}", "plan=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert "augmentation.mixup_alpha: 0, 0.4 (2)" in text
    assert "augmentation.smoothing: 0, 0.1 (2)" in text
    assert "8 runs" in text and "finished already: 0 of 8" in text
    assert "to run: 8, estimated" in text and "Nothing was trained or written" in text
    assert not out.exists()


def test_a_plan_counts_the_runs_a_sweep_would_skip(tmp_path):
    out = tmp_path / "out"
    first = run_module([*GRID[:-1], "trainer.seed=0", f"hydra.sweep.dir={out}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    plan = run_module([*GRID, f"hydra.sweep.dir={out}", "plan=true"], tmp_path)
    assert "finished already: 4 of 8" in plan.stdout, plan.stdout
    assert "to run: 4" in plan.stdout
    assert "another configuration" not in plan.stdout
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert before == sorted(p.relative_to(out) for p in out.rglob("*"))  # nothing new
    # A folder holding a finished run of another configuration is not one the sweep skips:
    # it refuses it (src.run.preflight.completed_results), and the plan says so.
    results = sorted(out.rglob("results.json"))[0]
    record = json.loads(results.read_text())
    results.write_text(json.dumps({**record, "config_fingerprint": "0" * 16}))
    plan = run_module([*GRID, f"hydra.sweep.dir={out}", "plan=true"], tmp_path)
    assert "finished already: 3 of 8" in plan.stdout, plan.stdout
    assert "held by a run of another configuration: 1 of 8" in plan.stdout
    assert "to run: 4" in plan.stdout
    # skip_completed=false trains every run again, finished or not.
    plan = run_module([*GRID, f"hydra.sweep.dir={out}", "plan=true", "skip_completed=false"],
                      tmp_path)
    assert "to run: 8" in plan.stdout and "another configuration" not in plan.stdout
    assert "skip_completed=false trains every run again" in plan.stdout


def test_a_single_run_plan_leaves_no_folder(tmp_path):
    done = run_module(["trainer.epochs=2", f"paths.output_dir={tmp_path / 'out'}",
                       "plan=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Plan of one run" in done.stdout and "estimated" in done.stdout
    assert not any((tmp_path / "out").rglob("*"))


def test_a_bad_plan_value_is_refused_in_one_paragraph(tmp_path):
    for args in (["plan=maybe"], ["-m", "trainer.seed=0,1", "plan=1"]):
        done = run_module([*args, f"paths.output_dir={tmp_path / 'out'}"], tmp_path)
        assert done.returncode == 2
        assert "plan=" in done.stderr and "true" in done.stderr and "Traceback" not in done.stderr


def test_the_estimate_adds_training_evaluation_and_start_up():
    c = Estimate(step_s=0.01, eval_image_s=1e-5, steps_per_epoch=10, eval_images=1000,
                 epochs=4, evaluations=2)
    from src.sweep.plan import STARTUP_S

    assert abs(c.run_s - (STARTUP_S + 4 * 10 * 0.01 + 2 * 1000 * 1e-5)) < 1e-12
    assert duration(3725) == "1:02:05"


def test_a_key_given_again_on_the_command_line_replaces_the_studys_axis():
    """A study's hydra.sweeper.params come first, the command line after: as Hydra's sweeper,
    the plan's grid takes a key's last value (`noise.rate=0.4` sweeps no noise rate)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.sweep.plan import axes

    parsed = OverridesParser.create().parse_overrides(
        ["noise.rate=0,0.4", "trainer.seed=0,1", "noise.rate=0.4", "model=mlp,cnn"])
    assert axes(parsed) == [("trainer.seed", ["0", "1"]), ("model", ["mlp", "cnn"])]
    parsed = OverridesParser.create().parse_overrides(["noise.rate=0", "noise.rate=0.2,0.8"])
    assert axes(parsed) == [("noise.rate", ["0.2", "0.8"])]


def test_jobs_that_differ_in_replicates_and_batchable_keys_cost_alike():
    a = setting_key(["model=cnn", "trainer.seed=0", "augmentation.smoothing=0.1", "noise.seed=1"])
    b = setting_key(["trainer.seed=3", "model=cnn", "augmentation.smoothing=0"])
    assert a == b == ("model=cnn",)
    assert setting_key(["model=mlp"]) != a
    assert json.dumps(a)  # plain strings


def test_plan_before_prints_the_plan_then_trains(tmp_path):
    out = tmp_path / "out"
    done = run_module(["-m", "trainer.epochs=1", "model=cnn", "model.channels=[8,16]",
                       "trainer.seed=0,1", f"hydra.sweep.dir={out}", "plan=before"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "to run: 2, estimated" in done.stdout and "Training them now" in done.stdout
    assert len(list(out.rglob("results.json"))) == 2


def test_a_study_prints_its_plan_before_it_trains():
    from tests.conftest import make_cfg

    assert make_cfg(["+experiment=quickstart"]).plan == "before"
    assert make_cfg(["+experiment=quickstart", "plan=true"]).plan is True
    assert make_cfg([]).plan is False


def test_a_models_step_is_timed_once_per_process(monkeypatch):
    """The plan's estimate and the launcher's stacking rule ask for the same step (and a
    study's settings share it): timed once, re-timed for another model, batch or device."""
    from omegaconf import OmegaConf

    from src.training import step_time

    calls = []
    monkeypatch.setattr(step_time, "_TIMED", {})
    monkeypatch.setattr(step_time, "_timed", lambda *a: calls.append(a) or (
        0.01, 0.001 if a[-1] else math.nan))  # a[-1]: whether the forward is timed
    cfg = OmegaConf.create({"model": {"name": "mlp", "hidden_sizes": [8]},
                            "dataset": {"image_shape": [1, 8, 8], "num_classes": 10},
                            "trainer": {"device": "cpu", "eval_batch_size": 64},
                            "noise": {"rate": 0.4}})
    assert step_time.step_seconds(cfg, 32, "cpu", forward=False)[0] == 0.01
    assert step_time.step_seconds(cfg, 32, "cpu") == (0.01, 0.001)  # now with the forward
    other_noise = OmegaConf.merge(cfg, {"noise": {"rate": 0.0}})
    assert step_time.step_seconds(other_noise, 32, "cpu") == (0.01, 0.001)
    assert len(calls) == 2
    step_time.step_seconds(cfg, 64, "cpu")
    step_time.step_seconds(OmegaConf.merge(cfg, {"model": {"hidden_sizes": [16]}}), 32, "cpu")
    assert len(calls) == 4
