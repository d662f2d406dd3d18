"""Every experiment file as a real multirun (tiny overrides), launchers, sweep resumption."""

import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from src.files import read_json
from tests.conftest import CONF, popen_module, run_module

pytestmark = pytest.mark.slow

SMALL_CNN = ["model.channels=[8,16]"]
NO_ANALYSIS = ["~hydra.callbacks.analysis"]


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A tiny CIFAR-shaped archive and a CIFAR-10N-format label file that matches it."""
    d = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    y_train = np.arange(120) % 10
    np.savez(d / "c.npz", x_train=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8),
             y_train=y_train, x_test=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(40) % 10)
    labels = {"clean_label": y_train}
    for i, key in enumerate(["aggre_label", "worse_label", "random_label1", "random_label2",
                             "random_label3"]):
        noisy = y_train.copy()
        noisy[: 10 * (i + 1)] = (noisy[: 10 * (i + 1)] + 1) % 10
        labels[key] = noisy
    torch.save(labels, d / "CIFAR-10_human.pt")
    np.savez(d / "m.npz", x_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
             y_train=np.arange(300) % 10, x_test=rng.integers(0, 256, (40, 28, 28),
                                                            dtype=np.uint8),
             y_test=np.arange(40) % 10)  # MNIST-shaped
    return d


TINY_GPU_STUDY = ["trainer.epochs=1", "model.width=4", "trainer.batch_size=32",
                  "trainer.eval_batch_size=64"]
CASES = {
    "quickstart": ["trainer.epochs=1", "augmentation.mixup_alpha=0,0.4",
                   "augmentation.smoothing=0,0.1", "trainer.seed=0,1"],
    "noise_sweep": ["trainer.epochs=1", "noise.rate=0,0.4", "trainer.seed=0",
                    "noise.seed=0"] + SMALL_CNN,
    "eps_alpha_grid": ["trainer.epochs=1", "augmentation.smoothing=0,0.1",
                       "augmentation.mixup_alpha=0,1.0", "trainer.seed=0", "noise.seed=0"]
    + SMALL_CNN,
    "model_families": ["trainer.epochs=1", "augmentation.smoothing=0.1",
                       "augmentation.mixup_alpha=0.4", "trainer.seed=0",
                       "dataset.val_fraction=0"],
    "gls_noise": ["trainer.epochs=2", "augmentation.smoothing_start_epoch=1",
                  "augmentation.smoothing=0.2,-1.0", "augmentation.mixup_alpha=0,1.0",
                  "noise.rate=0.4", "trainer.seed=0", "noise.seed=0"] + SMALL_CNN,
    "mixup_paper_cifar10": TINY_GPU_STUDY + ["noise.rate=0.5", "augmentation.mixup_alpha=0,8",
                                             "augmentation.smoothing=0,0.1"],
    "cifar10n": TINY_GPU_STUDY + ["noise.label_set=aggre,worse", "augmentation=none,mixup",
                                  "dataset.val_fraction=0"],
    "repro_jocor_mnist": ["trainer.epochs=2", "trainer.decay_start=1",
                          "trainer.steps_per_epoch=2", "noise.rate=0.2,0.5", "trainer.seed=1,2"],
    # Two of its panels (a clean one: its two draws are draws of the training subset) on an
    # MNIST-shaped archive, negative eps warmed up for 1 of 2 epochs.
    "answer": ["trainer.epochs=2", "trainer.eval_every=1", "dataset.train_subset=200",
               "+panel=fmnist_mlp_clean,mnist_mlp_asym40", "augmentation.mixup_alpha=0,0.4",
               "augmentation.smoothing=-0.4,0", "trainer.seed=0", "noise.seed=0,1",
               "augmentation.smoothing_start_epoch='${if_negative:${augmentation.smoothing},1,0}'"],
    "answer_gpu": TINY_GPU_STUDY + ["+panel=cifar10_preact_sym50,cifar10n_preact_worse",
                                    "augmentation.mixup_alpha=0,1", "augmentation.smoothing=0",
                                    "trainer.seed=0"],
    "gls_stage1": ["dataset=digits", "model=cnn", "trainer.epochs=2", "trainer.milestones=[1]",
                   "noise.rate=0.4", "trainer.seed=0,1"] + SMALL_CNN,
}
# Studies that need another study's runs first: tested end to end where named.
COVERED_ELSEWHERE = {"gls_stage2": "tests/test_init_from.py (stage 1, then stage 2 from it)"}
EXPECTED_RUNS = {"quickstart": 16, "noise_sweep": 8, "eps_alpha_grid": 4, "model_families": 6,
                 "mixup_paper_cifar10": 4, "cifar10n": 4, "gls_noise": 4,
                 "repro_jocor_mnist": 4, "answer": 16, "gls_stage1": 2, "answer_gpu": 4}


def test_every_experiment_file_has_a_case():
    names = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert names == set(CASES) | set(COVERED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_experiment_runs_as_a_real_multirun(tmp_path, cifar_like, name):
    extra = list(CASES[name])
    if name in ("mixup_paper_cifar10", "cifar10n", "answer_gpu"):
        extra.append(f"dataset.npz={cifar_like / 'c.npz'}")
    if name == "answer_gpu":  # its human-label panel reads the labels under paths.data_dir
        extra.append(f"paths.data_dir={cifar_like}")
    if name == "cifar10n":
        extra.append(f"noise.file={cifar_like / 'CIFAR-10_human.pt'}")
    if name in ("repro_jocor_mnist", "answer"):
        extra.append(f"dataset.npz={cifar_like / 'm.npz'}")
    analyse = name == "quickstart"  # the analysis callback is tested once, on the quickstart
    flags = [a for a in extra if a == "-m"]  # Hydra's flags come before the overrides
    extra = [a for a in extra if a != "-m"]
    out = run_module(flags + [f"+experiment={name}"] + extra + ([] if analyse else NO_ANALYSIS),
                     cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    study = tmp_path / "outputs" / name
    results = [read_json(p) for p in study.rglob("results.json")]
    assert len(results) == EXPECTED_RUNS[name]
    assert all(r["status"] == "completed" and r["experiment"] == name for r in results)
    # Folders read like the grid: the overrides without the seed, then seed=N.
    for p in study.rglob("results.json"):
        assert p.parent.name.startswith("seed=") and "trainer.seed" not in str(p)
    if analyse:
        assert (study / "analysis" / "report.md").exists()
        assert "±" in out.stdout


def test_rerun_of_an_interrupted_study_finishes_only_the_missing_runs(tmp_path):
    # One job after another (the quickstart's batched launcher would finish all 8 at once).
    args = ["+experiment=quickstart", "hydra/launcher=basic", "trainer.epochs=3",
            "augmentation.mixup_alpha=0,0.4", "augmentation.smoothing=0,0.1", "noise.rate=0.4",
            "trainer.seed=0,1"] + NO_ANALYSIS
    proc = popen_module(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = tmp_path / "outputs" / "quickstart"
    deadline = time.time() + 300
    while len(list(study.rglob("results.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in study.rglob("results.json")
            if read_json(p)["status"] == "completed"}
    assert 3 <= len(done) < 8
    out = run_module(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    after = list(study.rglob("results.json"))
    assert len(after) == 8 and all(read_json(p)["status"] == "completed" for p in after)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # not rerun
    assert out.stderr.count("skipping") + out.stdout.count("skipping") == len(done)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_a_two_job_sweep(tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    out = run_module(["-m", f"hydra/launcher={launcher}", "trainer.epochs=1", "trainer.seed=0,1",
                      "model.channels=[8,16]", "trainer.progress=false"] + extra,
                     cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = sorted(p.parent.name for p in (tmp_path / "outputs").rglob("results.json"))
    assert found == ["seed=0", "seed=1"]
