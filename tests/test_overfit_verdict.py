"""debug=overfit ends with a verdict: PASS when the last train accuracy on its batch reaches
trainer.overfit_pass_acc, FAIL with the numbers otherwise."""

from __future__ import annotations

import re

import pytest

from src.config.validate import validate
from src.errors import ConfigError
from src.run.closing import overfit_verdict, run_summary
from src.run.records import METRICS, write_metrics
from src.train import train
from tests.conftest import make_cfg, run_module


def _summary(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    cfg = make_cfg(["debug=overfit", "trainer.progress=false", *overrides], run_dir=run_dir)
    return run_summary(run_dir, train(cfg), cfg)


def test_a_model_that_fits_its_batch_passes(tmp_path):
    text = _summary(tmp_path, "trainer.epochs=100")  # fitted long before (tests/test_debug.py)
    [line] = [x for x in text.splitlines() if x.startswith("overfit check:")]
    assert line.startswith("overfit check: PASS: train accuracy 1.0000")
    assert "on 1 batch of 128 after 100 epochs" in line
    assert "trainer.overfit_pass_acc = 0.99" in line


def test_a_run_that_cannot_fit_its_batch_fails_with_its_numbers(tmp_path):
    done = run_module(["debug=overfit", "trainer.progress=false", "trainer.lr=1e-7",
                       "trainer.epochs=3", "trainer.eval_every=1"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("overfit check:")]
    found = re.fullmatch(r"overfit check: FAIL: train accuracy (\d\.\d{4}) \(loss [\d.]+\) on 1 "
                         r"batch of 128 after 3 epochs, below trainer.overfit_pass_acc = 0\.99: "
                         r"the model, loss or optimiser cannot fit a few images", line)
    assert found and float(found.group(1)) < 0.99, line


def test_the_threshold_is_the_configs(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_metrics(run_dir / METRICS, [{"epoch": 5, "train_acc": 0.95, "train_loss": 0.2}])
    done = {"status": "completed"}
    cfg = make_cfg(["debug=overfit"])
    assert "FAIL: train accuracy 0.9500" in overfit_verdict(run_dir, done, cfg)
    lax = make_cfg(["debug=overfit", "trainer.overfit_pass_acc=0.9"])
    assert "PASS: train accuracy 0.9500" in overfit_verdict(run_dir, done, lax)


def test_diverged_fails_and_an_unfinished_run_has_no_verdict(tmp_path):
    cfg = make_cfg(["debug=overfit"])
    assert overfit_verdict(tmp_path, {"status": "diverged"}, cfg).startswith(
        "overfit check: FAIL: the run diverged")
    assert "no verdict" in overfit_verdict(tmp_path, {"status": "interrupted"}, cfg)


def test_a_run_on_the_whole_split_gets_no_verdict(tmp_path):
    cfg = make_cfg([], run_dir=tmp_path)
    text = run_summary(tmp_path, {"status": "completed", "final_test_acc": 0.5}, cfg)
    assert "overfit check" not in text


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1", "abc"])
def test_overfit_pass_acc_is_a_fraction(bad, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.overfit_pass_acc=.*\(0, 1\]"):
        validate(make_cfg([f"trainer.overfit_pass_acc={bad}"], run_dir=tmp_path))
