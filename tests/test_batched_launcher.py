"""Runs of a grid trained together as one batched model (hydra/launcher=batched) equal the same
runs trained separately within float tolerance, and write what the separate runs write.

Members may differ in the batchable keys only (src.config.BATCHABLE_KEYS): the seed, Mixup's
alpha (each member's lambdas from its own alpha and generator), the smoothing eps (each member's
uniform mass in the loss) and when smoothing starts. As for seeds trained together
(tests/test_multiseed.py), batched and separate kernels are different code paths, so members
agree with their separate runs to float rounding, not to the bit.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from hydra_plugins.lsmix_batched_launcher.batched_launcher import _plan
from src.augmentation import mixup_smoothing_loss
from src.config import BATCHABLE_KEYS
from src.errors import ConfigError
from src.files import read_json
from src.run import preflight
from src.run.batches import batch_key, check_batch, plan_batches
from src.run.lifecycle import run_job
from src.run.records import read_metrics
from src.train import LaunchedJob, train, train_batch
from src.training import model_cache
from src.training.device import Execution
from src.training.evaluate import classification_metrics
from src.training.trainer import SingleTrainer, StackedTrainer
from tests.conftest import ROOT, make_cfg, run_module
from tests.test_fastpath import TRAINER, tiny_data

CPU = Execution(torch.device("cpu"), None, channels_last=False)
BASE = {"cutmix_alpha": 0.0, "mix_prob": 1.0, "mix_mode": "batch", "pairing": "permutation",
        "smoothing_to": "all"}
# (seed, alpha, eps, smoothing_start_epoch): unmixed and unsmoothed members beside mixed and
# smoothed ones, one seed twice, one member smoothing from its second epoch only.
GRID = [(0, 0.0, 0.0, 0), (3, 0.4, 0.1, 0), (7, 1.0, 0.0, 0), (0, 0.2, 0.2, 1)]


def train_grid(model_cfg: dict, grid=GRID, base=BASE, epochs: int = 2):
    """The batched trainer of the grid's members and one separate trainer per member."""
    data = tiny_data()  # crops and flips on: every random draw is compared
    augs = [{**base, "mixup_alpha": a, "smoothing": e, "smoothing_start_epoch": s}
            for _, a, e, s in grid]
    seeds = [g[0] for g in grid]
    multi = StackedTrainer(model_cfg, (3, 8, 8), data, TRAINER, augs, CPU, seeds)
    single = [SingleTrainer(model_cache.fresh_model(model_cfg, (3, 8, 8), 4, CPU, s), data,
                            TRAINER, aug, CPU, s) for s, aug in zip(seeds, augs)]
    stats = [(multi.train_epoch(), [t.train_epoch()[0] for t in single]) for _ in range(epochs)]
    return data, multi, single, stats


def assert_members_match(model_cfg: dict, rel_loss: float, tol: dict, **grid_kw) -> None:
    data, multi, single, stats = train_grid(model_cfg, **grid_kw)
    for batched, separate in stats:
        for b, s in zip(batched, separate):
            assert b.loss == pytest.approx(s.loss, rel=rel_loss)
            assert b.acc == pytest.approx(s.acc, abs=1e-5)
    test = multi.predict(data.test.x)
    for k, tr in enumerate(single):
        sd = multi.member_state_dict(k)
        for name, value in tr.model.state_dict().items():  # BN running stats included
            torch.testing.assert_close(sd[name].float(), value.float(), **tol, msg=name)
        got = classification_metrics(test[k], data.test.y)
        want = classification_metrics(tr.predict(data.test.x)[0], data.test.y)
        assert got["acc"] == want["acc"]
        assert got["loss"] == pytest.approx(want["loss"], rel=rel_loss * 10)


def test_mlp_members_with_their_own_alpha_and_eps_match_their_separate_runs():
    assert_members_match({"name": "mlp", "hidden_sizes": [16]}, 1e-6,
                         {"rtol": 1e-5, "atol": 1e-6})


def test_cnn_members_with_their_own_alpha_and_eps_match_their_separate_runs():
    assert_members_match({"name": "cnn", "channels": [4, 8], "dropout": 0.0}, 1e-5,
                         {"rtol": 1e-4, "atol": 1e-5})


def test_members_under_cutmix_and_per_sample_lambdas_match_their_separate_runs():
    """CutMix on for all, Mixup for some (alpha 0: CutMix alone, "cut" throughout), one lambda
    per sample: the draws a member makes are its separate run's."""
    base = {**BASE, "cutmix_alpha": 1.0, "mix_mode": "elem", "mix_prob": 0.8}
    grid = [(0, 0.0, 0.1, 0), (1, 0.4, 0.0, 0), (2, 1.0, 0.2, 0)]
    assert_members_match({"name": "cnn", "channels": [4, 8], "dropout": 0.0}, 1e-5,
                         {"rtol": 1e-4, "atol": 1e-5}, grid=grid, base=base)


def test_members_must_share_every_other_mixing_key():
    augs = [{**BASE, "mixup_alpha": 0.2, "smoothing": 0.0},
            {**BASE, "mixup_alpha": 0.2, "smoothing": 0.0, "mix_mode": "elem"}]
    with pytest.raises(ValueError, match="mixup_alpha, smoothing"):
        StackedTrainer({"name": "mlp", "hidden_sizes": [8]}, (3, 8, 8), tiny_data(), TRAINER,
                       augs, CPU, [0, 1])


def test_loss_with_one_eps_per_member_is_each_members_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    y, y2 = torch.randint(0, 4, (3, 5), generator=g), torch.randint(0, 4, (3, 5), generator=g)
    lam, eps = torch.tensor([1.0, 0.3, 0.7]), torch.tensor([0.0, 0.1, -0.2])
    together = mixup_smoothing_loss(logits, y, y2, lam, eps)
    for k in range(3):
        alone = mixup_smoothing_loss(logits[k], y[k], y2[k], lam[k], eps[k])
        torch.testing.assert_close(together[k], alone)


# ------------------------------------------------------------------ job side

TINY_MLP = ["model=mlp", "model.hidden_sizes=[32]", "trainer.epochs=2", "trainer.batch_size=64",
            "trainer.progress=false", "trainer.device=cpu", "augmentation=mixup_smoothing",
            "noise=symmetric", "noise.rate=0.2", "dataset.val_fraction=0.2"]
CELLS = [(0.0, 0.0, 0), (0.4, 0.1, 1), (1.0, 0.0, 0), (0.2, 0.2, 1)]


def cell(alpha: float, eps: float, seed: int, extra: list[str] | None = None) -> list[str]:
    return TINY_MLP + [f"augmentation.mixup_alpha={alpha}", f"augmentation.smoothing={eps}",
                       f"trainer.seed={seed}", *(extra or [])]


def cfg_in(overrides: list[str], run_dir: Path):
    return make_cfg(overrides + [f"paths.run_dir='{run_dir}'"])


def test_batch_key_leaves_out_the_batchable_keys_only():
    a = make_cfg(cell(0.0, 0.0, 0), run_dir=Path("/o/a"))
    b = make_cfg(cell(0.4, 0.1, 1, ["augmentation.name=mixup"]), run_dir=Path("/o/b"))
    c = make_cfg(cell(0.0, 0.0, 0, ["trainer.lr=0.05"]), run_dir=Path("/o/c"))
    assert batch_key(a) == batch_key(b) != batch_key(c)
    assert "trainer.seed" in BATCHABLE_KEYS and "trainer.lr" not in BATCHABLE_KEYS
    check_batch([a, b])
    with pytest.raises(ConfigError, match=r"trainer\.lr.*only trainer\.seed"):
        check_batch([a, c])


def test_plan_groups_by_the_shared_config_and_cuts_at_max_members():
    keys = ["x", "y", "x", "x", None, "y", "x"]
    plan = plan_batches(keys, [1] * 7, 2, [True] * 7)
    assert plan == [[0, 2], [3, 6], [1, 5], [4]]
    assert plan_batches(["x"] * 3, [2, 2, 1], 4, [True] * 3) == [[0, 1], [2]]
    assert plan_batches(["x"] * 3, [1] * 3, 16, [False] * 3) == [[0], [1], [2]]
    with pytest.raises(ConfigError, match="max_members"):
        plan_batches(["x"], [1], 0, [True])


def test_launcher_plan_separates_other_settings_and_runs_recurrent_models_alone():
    grid = [cell(a, e, s) for a, e, s in CELLS]
    other_lr = [cell(a, e, s, ["trainer.lr=0.05"]) for a, e, s in CELLS[:2]]
    base = [o for o in TINY_MLP if not o.startswith("model")]
    lstm = [base + ["model=lstm", f"trainer.seed={s}"] for s in (0, 1)]
    gru = [base + ["model=gru", f"trainer.seed={s}"] for s in (0, 1)]
    tasks = [make_cfg(o, run_dir=Path(f"/o/{i}"))
             for i, o in enumerate(grid + other_lr + lstm + gru)]
    assert _plan(tasks, 16, stack="always") == ([[0, 1, 2, 3], [4, 5], [6], [7], [8], [9]], [])
    assert _plan(tasks, 3, stack="always")[0] == [[0, 1, 2], [3], [4, 5], [6], [7], [8], [9]]
    # never: every run alone, and the log names the models that could have stacked.
    assert _plan(tasks, 16, stack="never") == ([[i] for i in range(10)], ["mlp"])


def test_auto_stacks_only_while_a_step_is_short(monkeypatch, caplog):
    from src.run import batches
    from src.training import step_time as plan

    tasks = [make_cfg(cell(a, e, s), run_dir=Path(f"/o/{i}")) for i, (a, e, s) in
             enumerate(CELLS)]
    timed: list[int] = []

    def step_of(seconds: float | Exception):
        def step_seconds(cfg, batch, device=None, forward=True):
            assert device == "cpu" and not forward  # the training step alone, on the CPU
            timed.append(batch)
            if isinstance(seconds, Exception):
                raise seconds
            return seconds, 0.0
        return step_seconds

    monkeypatch.setattr(plan, "step_seconds", step_of(batches.STACK_MAX_STEP_S / 2))
    assert _plan(tasks, 16, "cpu") == ([[0, 1, 2, 3]], [])
    assert len(timed) == 1  # once per setting, not per job
    monkeypatch.setattr(plan, "step_seconds", step_of(batches.STACK_MAX_STEP_S * 2))
    assert _plan(tasks, 16, "cpu") == ([[0], [1], [2], [3]], ["mlp"])
    # A GPU this process cannot see (a SLURM job's): stacked, as before, never timed.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _plan(tasks, 16, "cuda") == ([[0, 1, 2, 3]], [])
    assert len(timed) == 2
    assert _plan(tasks, 16, "cpu", "always") == ([[0, 1, 2, 3]], [])
    # A setting with one job left has nothing to gain: never timed.
    assert _plan(tasks[:1], 16, "cpu") == ([[0]], []) and len(timed) == 2
    # A timing that fails stacks, as before the key, and says so.
    monkeypatch.setattr(plan, "step_seconds", step_of(RuntimeError("no memory")))
    with caplog.at_level(logging.WARNING):
        assert _plan(tasks, 16, "cpu") == ([[0, 1, 2, 3]], [])
    assert "could not time a step of mlp (RuntimeError: no memory)" in caplog.text


def test_batch_writes_each_runs_ordinary_folder_equal_to_its_separate_run(tmp_path):
    jobs = [LaunchedJob(cfg_in(cell(a, e, s), tmp_path / "b" / f"a={a},e={e}" / f"seed={s}"),
                        group=f"a={a},e={e}") for a, e, s in CELLS]
    accs = train_batch(jobs)
    for job, acc, (a, e, s) in zip(jobs, accs, CELLS):
        run_dir = Path(job.cfg.paths.run_dir)
        res = read_json(run_dir / "results.json")
        assert res["status"] == "completed" and acc == res["best_val_acc"]  # never test
        assert (res["mixup_alpha"], res["smoothing"], res["seed"]) == (a, e, s)
        assert res["group"] == job.group and res["run_dir"] == str(run_dir)
        assert res["trained_with"].startswith("4 runs differing in ")
        assert "trained_with_seeds" not in res
        assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
        assert (run_dir / "noise.json").exists() and (run_dir / "last.pt").exists()
        alone = train(make_cfg(cell(a, e, s), run_dir=tmp_path / "alone" / f"{a}-{e}-{s}"))
        for key in ("config_fingerprint", "config", "inputs", "method", "smoothing_uniform_mass",
                    "noise_rate_realized"):
            assert res[key] == alone[key], key
        assert res["final_test_acc"] == pytest.approx(alone["final_test_acc"], abs=0.01)
        assert res["final_test_loss"] == pytest.approx(alone["final_test_loss"], rel=1e-3)
        assert res["best_val_acc"] == pytest.approx(alone["best_val_acc"], abs=0.01)
    assert len({read_json(Path(j.cfg.paths.run_dir) / "results.json")["trained_with"]
                for j in jobs}) == 1  # one batch id
    # A rerun skips the completed runs; a new cell beside them trains alone.
    before = [read_json(Path(j.cfg.paths.run_dir) / "results.json")["finished_at"] for j in jobs]
    new = LaunchedJob(cfg_in(cell(0.4, 0.0, 0), tmp_path / "b" / "new" / "seed=0"), "new")
    again = train_batch(jobs + [new])
    assert again[:4] == accs and again[4] is not None
    assert [read_json(Path(j.cfg.paths.run_dir) / "results.json")["finished_at"]
            for j in jobs] == before
    assert "trained_with" not in read_json(Path(new.cfg.paths.run_dir) / "results.json")


def test_a_bad_job_fails_alone_and_the_others_train(tmp_path, capsys, monkeypatch):
    failed: list[str] = []
    monkeypatch.setattr(preflight, "FAILED_JOBS", failed)  # the sweep's list of failed jobs
    good = [LaunchedJob(cfg_in(cell(a, e, s), tmp_path / f"g{i}"), "g")
            for i, (a, e, s) in enumerate(CELLS[:2])]
    bad = LaunchedJob(cfg_in(cell(0.4, 1.5, 0), tmp_path / "bad"), "bad")
    accs = train_batch([good[0], bad, good[1]])
    assert accs[1] is None and accs[0] is not None and accs[2] is not None
    assert "augmentation.smoothing" in capsys.readouterr().err
    assert len(failed) == 1 and failed[0].startswith(str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_runs_that_differ_in_another_key_are_refused_before_anything_is_written(tmp_path):
    cfgs = [cfg_in(cell(0.0, 0.0, 0), tmp_path / "a"),
            cfg_in(cell(0.0, 0.0, 1, ["trainer.lr=0.05"]), tmp_path / "b")]
    with pytest.raises(ConfigError, match=r"trainer\.lr"):
        run_job(cfgs, ["a", "b"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ the launcher, end to end

PLUGIN = ROOT / "hydra_plugins" / "lsmix_batched_launcher"


def test_plugin_modules_load_as_hydras_plugin_scan_loads_them():
    """Hydra executes each plugin module before it is in sys.modules (every Hydra command of
    the checkout scans them): a module that fails there breaks every command."""
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()  # a namespace package
    for path in sorted(PLUGIN.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"scan_check_{path.stem}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("hydra/launcher/batched.yaml").node
    assert node._target_.endswith("BatchedLauncher") and node.max_members == 16

SWEEP = ["-m", "model=mlp", "model.hidden_sizes=[32]", "trainer.epochs=2",
         "trainer.batch_size=64", "trainer.progress=false", "trainer.device=cpu",
         "augmentation=mixup_smoothing", "augmentation.mixup_alpha=0,0.4",
         "augmentation.smoothing=0,0.1", "trainer.seed=0,1"]


def runs_under(sweep_dir: Path) -> dict[str, dict]:
    """Each run folder (relative) with its results and the names of the files it holds."""
    out = {}
    for res_path in sorted(sweep_dir.rglob("results.json")):
        folder = res_path.parent
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        out[str(folder.relative_to(sweep_dir))] = {"results": json.loads(res_path.read_text()),
                                                   "files": files}
    return out


@pytest.mark.slow
def test_batched_sweep_writes_what_the_default_launcher_writes(tmp_path):
    default = run_module(SWEEP + [f"hydra.sweep.dir={tmp_path / 'default'}"], cwd=tmp_path)
    assert default.returncode == 0, default.stderr[-3000:]
    batched_args = SWEEP + [f"hydra.sweep.dir={tmp_path / 'batched'}", "hydra/launcher=batched",
                            "hydra.launcher.max_members=5", "hydra.launcher.stack=always"]
    batched = run_module(batched_args, cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert "Launching 8 jobs as 2 batches of at most 5 runs" in batched.stdout + batched.stderr
    assert "Sweep finished: 8 runs (8 completed)" in batched.stdout  # end callbacks ran
    want, got = runs_under(tmp_path / "default"), runs_under(tmp_path / "batched")
    assert len(want) == 8 and sorted(got) == sorted(want)
    for name, run in want.items():
        res, ref = got[name]["results"], run["results"]
        assert got[name]["files"] == run["files"], name  # train.log and .hydra/ included
        assert [k for k in res if k != "trained_with"] == list(ref)
        assert res["trained_with"].startswith(("5 runs", "3 runs"))
        for key in ("group", "method", "mixup_alpha", "smoothing", "seed",
                    "config_fingerprint", "config", "inputs", "epochs_done", "status"):
            assert res[key] == ref[key], (name, key)
        assert res["run_dir"].endswith(name)
        assert res["final_test_acc"] == pytest.approx(ref["final_test_acc"], abs=0.01), name
    # The analysis pools both sweeps into the same cells.
    from analysis.aggregate import group_keys
    from analysis.load import load_runs

    runs = [load_runs([tmp_path / which]).completed for which in ("default", "batched")]
    assert group_keys(runs[0]) == group_keys(runs[1])
    assert "trained_with" not in group_keys(runs[1])
    # Run again: every run is complete, so nothing trains and nothing is rewritten.
    again = run_module(batched_args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping" in again.stdout + again.stderr
    rerun = runs_under(tmp_path / "batched")
    assert {n: r["results"]["finished_at"] for n, r in rerun.items()} == \
        {n: r["results"]["finished_at"] for n, r in got.items()}


@pytest.mark.slow
def test_bad_max_members_is_refused_before_anything_is_written(tmp_path):
    out = run_module(SWEEP + [f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=batched",
                              "hydra.launcher.max_members=0"], cwd=tmp_path)
    assert out.returncode == 2
    assert "hydra.launcher.max_members=0 is not valid" in out.stderr
    assert not list((tmp_path / "s").rglob("results.json"))
    out = run_module(SWEEP + [f"hydra.sweep.dir={tmp_path / 't'}", "hydra/launcher=batched",
                              "hydra.launcher.stack=sometimes"], cwd=tmp_path)
    assert out.returncode == 2 and "hydra.launcher.stack='sometimes' is not valid" in out.stderr
    assert "auto | always | never" in out.stderr and not (tmp_path / "t").exists()
