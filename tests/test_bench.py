"""The benchmark runs in smoke mode and writes the JSON its docstring documents; the reference
loop computes the suite's loss. Timings are the benchmark's output, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from src.augmentation import mixup_smoothing_loss
from src.tools import bench, reference
from tests.conftest import TINY

RESULT_FIELDS = {"name", "seconds", "seconds_all", "device_seconds", "images", "images_per_s"}
SUMMARY_FIELDS = {"suite_images_per_s", "reference_images_per_s", "reference_best_workers",
                  "speedup_vs_reference",
                  "bare_images_per_s", "overhead_vs_bare", "achieved_tflops",
                  "flop_floor_fraction", "multiseed_images_per_s", "multiseed_speedup",
                  "eval_images_per_s"}
MACHINE_FIELDS = {"platform", "processor", "cpu_count", "torch_threads", "torch", "python",
                  "device", "device_name"}
CONFIG_FIELDS = {"dataset", "shape", "num_classes", "n_train", "model", "model_args",
                 "trainer", "eval", "alpha",
                 "eps", "batch_size", "device", "amp", "compile", "compile_mode", "channels_last",
                 "crop_padding", "hflip", "warmup", "repeats", "steps", "ref_workers",
                 "parallel_seeds", "peak_tflops", "smoke"}


def test_smoke_run_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--parallel-seeds", "2", "--eval", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["schema"] == 1 and report["command"].startswith("python -m src.tools.bench")
    assert MACHINE_FIELDS <= set(report["machine"])
    assert CONFIG_FIELDS <= set(report["config"])
    assert set(report["flops"]) == {"forward_per_image", "train_per_image"}
    assert report["flops"]["train_per_image"] == 3 * report["flops"]["forward_per_image"] > 0
    names = [r["name"] for r in report["results"]]
    assert names == ["suite_step", "suite_epoch", "bare_step", "reference_epoch_workers_0",
                     "multiseed_epoch", "suite_eval"]
    assert report["results"][-1]["images"] == report["config"]["n_train"]  # the whole split
    for r in report["results"]:
        assert set(r) == RESULT_FIELDS and r["seconds"] > 0 and r["images"] > 0
    assert set(report["summary"]) == SUMMARY_FIELDS
    assert report["summary"]["flop_floor_fraction"] is None  # CPU, no peak given
    for key in SUMMARY_FIELDS | RESULT_FIELDS | CONFIG_FIELDS | MACHINE_FIELDS:
        assert f"`{key}`" in bench.__doc__, f"{key} is not documented"
    assert "speedup_vs_reference" in capsys.readouterr().out  # the printed table


def test_smoke_on_synthetic_cifar_shape_with_crop_and_flip(tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--smoke", "--shape", "3,32,32", "--n", "64", "--model", "mlp",
                "--model-arg", "hidden_sizes=[16]", "--alpha", "0", "--out", str(out)])
    cfg = json.loads(out.read_text())["config"]
    assert cfg["crop_padding"] == 4 and cfg["hflip"] is True  # as conf/dataset/cifar10.yaml
    assert cfg["model_args"]["hidden_sizes"] == [16]


def test_reference_criterion_is_the_suite_loss():
    """Mixup's lam * CE_eps(y_a) + (1 - lam) * CE_eps(y_b) equals mixup_smoothing_loss."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    y_a, y_b = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (8,), generator=g)
    ref = reference.mixup_criterion(nn.CrossEntropyLoss(label_smoothing=0.1), logits, y_a, y_b,
                                    0.3)
    ours = mixup_smoothing_loss(logits, y_a, y_b, torch.tensor(0.3), torch.tensor(0.1))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_reference_epoch_trains_with_per_image_transforms():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 20).astype(np.int64)
    loader = reference.make_loader(x, y, 8, [0.5] * 3, [0.25] * 3, crop_padding=4, hflip=True,
                                   workers=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    res = reference.train_epoch(model, loader, reference.make_optimizer(model), 1.0, 0.1,
                                torch.device("cpu"))
    assert res.images == 20 and np.isfinite(res.loss) and 0 <= res.acc <= 1


def test_sweep_time_accounts_for_every_run(tmp_path):
    """A two-run sweep, timed from outside: the JSON's seconds add up and name the runs."""
    from src.tools import sweep_time

    out = tmp_path / "sweep_time.json"
    report = sweep_time.main([*TINY, "augmentation=none,mixup",
                              "trainer.seed=0", "noise=none", "--dir", str(tmp_path / "s"),
                              "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["runs"] == report["completed"] == 2
    assert 0 < report["train_s"] and 0 < report["eval_s"]
    assert report["outside_s"] == pytest.approx(
        report["wall_s"] - report["train_s"] - report["eval_s"])
    assert 0 < report["outside_fraction"] < 1
    assert "augmentation=none,mixup" in report["command"]
    assert "augmentation=none,mixup,smoothing" not in report["command"]  # the axis replaced


def test_sweep_time_takes_a_studys_own_grid():
    from src.tools.sweep_time import GRID, sweep_args

    study = ["+experiment=quickstart", "model=mlp", "hydra/launcher=basic"]
    assert sweep_args(study) == study
    assert sweep_args(["model=mlp"]) == [*GRID, "model=mlp"]


def test_sweep_time_counts_seeds_trained_together_once(tmp_path):
    from src.tools.sweep_time import account

    for seed in (0, 1):
        d = tmp_path / "cell" / f"seed={seed}"
        d.mkdir(parents=True)
        d.joinpath("results.json").write_text(json.dumps(
            {"status": "completed", "group": "cell", "trained_with_seeds": "0,1",
             "train_time_s": 2.0, "eval_time_s": 0.5}))
    alone = tmp_path / "other" / "seed=0"
    alone.mkdir(parents=True)
    alone.joinpath("results.json").write_text(json.dumps(
        {"status": "completed", "group": "other", "train_time_s": 1.0, "eval_time_s": 0.25}))
    assert account(tmp_path) == {"runs": 3, "completed": 3, "train_s": 3.0, "eval_s": 0.75}


@pytest.mark.parametrize("argv,option", [
    (["--model", "resnet9"], "--model"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--compile", "fastest"], "--compile"),
    (["--amp", "fp8"], "--amp"),
    (["--shape", "3,32"], "--shape"),
    (["--batch-size", "0"], "--batch-size"),
    (["--parallel-seeds", "-2"], "--parallel-seeds"),
    (["--eps", "1.5"], "--eps"),
    (["--device", "tpu"], "--device"),
    (["--threads", "0"], "--threads"),
    (["--ref-workers", "-1"], "--ref-workers"),
])
def test_bad_command_line_is_refused_before_anything_runs(argv, option, tmp_path, capsys):
    out = tmp_path / "b.json"
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", str(out), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{option}=" in err and "expected" in err and "Traceback" not in err
    assert not out.exists()


def test_the_bench_accepts_what_a_run_accepts(tmp_path):
    """Its values are checked by the suite's own validation: negative smoothing, which runs
    accept (Wei et al. 2022), is no bench error."""
    args = bench.parse_args(["--out", str(tmp_path / "b.json"), "--eps", "-0.5", "--smoke"])
    assert args.config.augmentation.smoothing == -0.5


def test_an_out_path_that_cannot_be_written_is_refused_before_timing(tmp_path, capsys):
    (tmp_path / "file").write_text("in the way")
    for out in (tmp_path / "file" / "b.json", tmp_path):
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--smoke", "--out", str(out)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--out=" in err and "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_out_folder_that_takes_no_files_is_refused_before_timing(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(bench, "run", lambda args: pytest.fail("timed before --out was checked"))
    with pytest.raises(SystemExit) as exit_:  # /proc: permission bits say root may write
        bench.main(["--smoke", "--out", "/proc/x/b.json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--out='/proc/x/b.json'" in err and "/proc/x cannot be written" in err
    assert bench.unwritable(tmp_path / "new" / "sub" / "b.json") is None
    assert not any(tmp_path.iterdir())  # the trial leaves no folder or file


@pytest.mark.parametrize(("argv", "key"), [
    (["--model-arg", "channels=[0]"], "model.channels"),
    (["--model", "mlp", "--model-arg", "channels=[8]"], "model.channels"),
    (["--alpha", "inf"], "augmentation.mixup_alpha"),
])
def test_bad_model_and_method_values_get_the_suites_own_message(argv, key, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--smoke", "--out", str(tmp_path / "b.json"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


def test_an_unreadable_archive_is_one_paragraph_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an archive")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--smoke", "--npz", str(bad), "--out", str(tmp_path / "b.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "dataset.npz" in err and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()


def test_smoke_runs_with_every_model_family(tmp_path):
    for model in ("mlp", "vit"):
        bench.main(["--smoke", "--model", model, "--out", str(tmp_path / f"{model}.json")])
        assert json.loads((tmp_path / f"{model}.json").read_text())["config"]["model"] == model


def test_failed_sweep_is_reported_with_its_error(tmp_path):
    from src.tools import sweep_time

    out = tmp_path / "st.json"
    with pytest.raises(SystemExit, match="augmentation.smoothing"):
        sweep_time.main(["augmentation.smoothing=2", "--dir", str(tmp_path / "s"),
                         "--out", str(out)])
    assert not out.exists()


def test_a_trainer_option_is_composed_before_the_bench_options(tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--smoke", "--trainer", "cifar", "--no-reference", "--out", str(out)])
    cfg = json.loads(out.read_text())["config"]
    assert cfg["trainer"] == "cifar" and cfg["eval"] is False
    assert bench.parse_args(["--smoke", "--trainer", "cifar"]).config.trainer.decay_all is True


def test_an_unknown_trainer_option_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--smoke", "--trainer", "nosuch"])
    assert "nosuch" in capsys.readouterr().err
