"""python -m src.eval: a run's saved weights evaluated again, as the run evaluated them."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from src.eval import evaluate, main
from src.files import read_json
from src.run.records import read_metrics
from src.train import train
from src.training.checkpoint import load_weights, save_weights
from tests.conftest import TINY, make_cfg, run_module

NOISY = ["dataset.val_fraction=0.2", "noise=symmetric", "noise.rate=0.3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny noisy run with a validation split; its checkpoint is kept."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    results = train(make_cfg(TINY + NOISY + ["trainer.keep_checkpoint=true"], run_dir=run_dir))
    assert results["status"] == "completed"
    return run_dir


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run's folder (tests add and remove files in it), named as
    a sweep names its runs."""
    return shutil.copytree(trained, tmp_path / "noise.rate=0.3,a=[1,2]" / "seed=0")


def _cli(monkeypatch, tmp_path, *args):
    """`python -m src.eval ARGS` in this process, from an empty folder; its exit status."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["src.eval", *args])
    status = main()
    assert not any(cwd.iterdir())  # no output folder, .hydra/ or log file
    return status


def test_last_weights_reproduce_the_runs_final_test_numbers_exactly(run):
    res = read_json(run / "results.json")
    out = evaluate(run)  # last.pt, or the kept checkpoint of a run that wrote none
    for key in ("test_acc", "test_loss", "test_ece", "memorized", "recovered"):
        assert out[key] == res[f"final_{key}"], key
    assert out["val_acc"] == read_metrics(run / "metrics.jsonl")[-1]["val_acc"]
    assert out["weights_epoch"] == 2 and out["fingerprint_matches_run"] is True
    assert out["filled_in"] == {}
    assert json.loads((run / "eval.json").read_text()) == json.loads(json.dumps(out))


def test_a_run_older_than_a_config_key_is_evaluated_with_its_current_default(run):
    text = (run / "config.yaml").read_text()
    assert text.count("  eval_every: 1\n") == 1
    (run / "config.yaml").write_text(text.replace("  eval_every: 1\n", ""))
    out = evaluate(run)
    assert out["filled_in"] == {"trainer.eval_every": 1}
    assert out["test_acc"] == read_json(run / "results.json")["final_test_acc"]


def test_saved_weights_files_load_back_and_are_what_eval_reads(run):
    weights = load_weights(run / "checkpoint.pt")
    save_weights(run / "last.pt", weights)
    back = load_weights(run / "last.pt")
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)
    (run / "checkpoint.pt").unlink()
    out = evaluate(run)
    assert out["weights"] == str(run / "last.pt")
    assert out["test_acc"] == read_json(run / "results.json")["final_test_acc"]
    # best.pt: its epoch is the run's first epoch of the best noisy-validation accuracy.
    save_weights(run / "best.pt", weights)
    rows = read_metrics(run / "metrics.jsonl")
    best = max(rows, key=lambda r: r["val_acc"])["epoch"]
    assert evaluate(run, which="best")["weights_epoch"] == best
    assert evaluate(run / "best.pt")["weights"] == str(run / "best.pt")


def test_a_member_of_seeds_trained_together_is_read_as_its_own_model(tmp_path):
    stacked = {"params": {"fc.weight": torch.arange(12.0).view(3, 2, 2)},
               "buffers": {"bn.running_mean": torch.tensor([[0.0], [1.0], [2.0]])}}
    torch.save({"fingerprint": "x", "trainer": {"weights": stacked}}, tmp_path / "c.pt")
    member = load_weights(tmp_path / "c.pt", member=1)
    assert torch.equal(member["fc.weight"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert member["bn.running_mean"].tolist() == [1.0]
    torch.save({"not": "weights"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds no model weights"):
        load_weights(tmp_path / "x.pt")


def test_the_run_writes_last_and_best_weights_that_reproduce_its_numbers(tmp_path):
    # Needs the run lifecycle to write last.pt and best.pt (trainer.save_weights,
    # trainer.save_best); no checkpoint is kept here.
    run_dir = tmp_path / "run"
    res = train(make_cfg(TINY + NOISY + ["trainer.epochs=3"], run_dir=run_dir))
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert not (run_dir / "checkpoint.pt").exists()
    assert evaluate(run_dir)["test_acc"] == res["final_test_acc"]
    best = evaluate(run_dir, which="best")
    assert best["test_acc"] == res["test_acc_at_best_val"]
    assert best["val_acc"] == res["best_val_acc"]


def test_temperature_fitted_on_validation_lowers_its_nll_and_keeps_accuracy(run):
    plain = evaluate(run)
    out = evaluate(run, temperature="fit")
    assert out["temperature"] > 0 and out["temperature"] != 1.0
    assert out["val_loss_ts"] <= out["val_loss"] + 1e-6  # T = 1 was a candidate
    assert out["test_acc"] == plain["test_acc"] and out["test_ece"] == plain["test_ece"]
    assert out["test_ece_ts"] != out["test_ece"]
    assert read_json(run / "eval.json")["temperature"] == out["temperature"]


def test_another_noise_model_relabels_the_images_the_run_trained_on(run, monkeypatch,
                                                                    tmp_path):
    res = read_json(run / "results.json")
    # The run's own noise again: the same images with the same labels, the same numbers.
    assert _cli(monkeypatch, tmp_path, f"ckpt_path={run}", "noise=symmetric",
                "noise.rate=0.3") is None
    same = read_json(run / "eval.json")
    assert (same["memorized"], same["recovered"]) == (res["final_memorized"],
                                                      res["final_recovered"])
    assert same["overrides"]["noise"]["rate"] == 0.3
    # Clean labels: nothing is corrupted, so nothing can be memorised or recovered.
    clean = evaluate(run, noise=make_cfg(["noise=none"]).noise)
    assert clean["memorized"] is None and clean["recovered"] is None
    assert clean["test_acc"] == same["test_acc"] and clean["val_acc"] == same["val_acc"]
    assert clean["train_acc_clean_subset"] != same["train_acc_clean_subset"]


@pytest.mark.parametrize("case", ["missing folder", "no weights", "no best", "corrupt weights",
                                  "bad config", "bad noise", "fit without validation",
                                  "bad option", "bad which", "bad device"])
def test_bad_input_is_one_paragraph_exit_2_and_writes_nothing(case, run, monkeypatch,
                                                                tmp_path, capsys):
    args = {"missing folder": [f"ckpt_path={tmp_path / 'nope'}"],
            "no weights": [f"ckpt_path={run}"],
            "no best": [f"ckpt_path={run}", "which=best"],
            "corrupt weights": [f"ckpt_path={run / 'last.pt'}"],
            "bad config": [f"ckpt_path={run}"],
            "bad noise": [f"ckpt_path={run}", "noise=symmetric", "noise.rate=1.5"],
            "fit without validation": [f"ckpt_path={run}", "temperature=fit"],
            "bad option": [f"ckpt_path={run}", "temperature=yes"],
            "bad which": [f"ckpt_path={run}", "which=first"],
            "bad device": [f"ckpt_path={run}", "device=tpu"]}[case]
    expected = {"missing folder": "ckpt_path=", "no weights": "which='last'",
                "no best": "which='best'", "corrupt weights": "last.pt' is not valid: a weights",
                "bad config": "augmentation.smoothing=1.5",
                "bad noise": "noise.rate=1.5", "fit without validation": "temperature='fit'",
                "bad option": "temperature='yes'", "bad which": "which='first'",
                "bad device": "trainer.device"}[case]
    for name in {"no weights": ["last.pt", "checkpoint.pt", "checkpoint.prev.pt"],
                 "no best": ["best.pt"]}.get(case, []):
        (run / name).unlink(missing_ok=True)
    if case == "corrupt weights":
        (run / "last.pt").write_bytes(b"not a torch file")
    if case == "bad config":
        cfg = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(cfg.replace("smoothing: 0.0", "smoothing: 1.5"))
    if case == "fit without validation":
        cfg = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(cfg.replace("val_fraction: 0.2", "val_fraction: 0.0"))
    before = sorted(p.name for p in run.iterdir())
    assert _cli(monkeypatch, tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Configuration error: ") and expected in err, err
    assert err.endswith("Nothing was evaluated.") and "\n" not in err
    assert sorted(p.name for p in run.iterdir()) == before  # no eval.json


@pytest.mark.slow
def test_python_m_src_eval(run, tmp_path):
    ok = run_module([f"ckpt_path={run}"], cwd=tmp_path, module="src.eval")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "test_acc" in ok.stdout and (run / "eval.json").is_file()
    (run / "best.pt").unlink(missing_ok=True)
    bad = run_module([f"ckpt_path={run}", "which=best"], cwd=tmp_path, module="src.eval")
    assert bad.returncode == 2 and "best.pt" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.parent.name]  # nothing else


@pytest.mark.parametrize(("arg", "says"), [
    ("whichh=best", "whichh='best' is not valid: a known key of the root config: "),
    ("whichh=best", "(did you mean which?)"),
    ("+foo=1", "foo=1 is not valid: a key of the eval command: "),
])
def test_a_misspelt_or_added_key_is_refused_with_a_suggestion(arg, says, run, monkeypatch,
                                                              tmp_path, capsys):
    assert _cli(monkeypatch, tmp_path, f"ckpt_path={run}", arg) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Configuration error: ") and says in err, err
    assert err.endswith("Nothing was evaluated.") and "\n" not in err
    assert not (run / "eval.json").exists()


def test_a_changed_archive_is_named_in_evals_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    arrays = {"x_train": rng.integers(0, 256, (120, 8, 8), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 120),
              "x_test": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 40)}
    np.savez(data, **arrays)
    run_dir = tmp_path / "run"
    train(make_cfg(TINY + ["trainer.epochs=1", "trainer.save_weights=true", "dataset=npz",
                           f"dataset.npz={data}", "dataset.image_shape=[1,8,8]",
                           "dataset.mean=[0.5]", "dataset.std=[0.25]"], run_dir=run_dir))
    np.savez(data, **{**arrays, "y_train": np.roll(arrays["y_train"], 1)})
    with caplog.at_level("WARNING", logger="src.eval"):
        assert evaluate(run_dir)["fingerprint_matches_run"] is False
    assert f"the content of dataset.npz ({data}) changed since the run" in caplog.text


def test_a_second_evaluation_keeps_the_first_as_eval_1(run):
    first = evaluate(run)
    second = evaluate(run, temperature="fit")
    assert read_json(run / "eval.json") == json.loads(json.dumps(second))  # the newest
    assert read_json(run / "eval-1.json") == json.loads(json.dumps(first))
    evaluate(run)
    assert read_json(run / "eval-2.json")["temperature"] == second["temperature"]
    assert sorted(p.name for p in run.glob("eval*.json")) == \
        ["eval-1.json", "eval-2.json", "eval.json"]
