"""Seeds trained together (src.training.trainer.StackedTrainer) equal the same seeds trained
separately within a tight float tolerance: batched and separate kernels are different code
paths (a vmapped linear layer is a batched matmul, a vmapped convolution one grouped
convolution), and which kernel a CPU picks, hence the order of its sums, differs between
machines (AVX-512 or not). Bit-for-bit equality is promised only for the same code path run
twice (resume, rerun), and tested there.
The job writes one normal run directory per seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.errors import ConfigError
from src.files import read_json
from src.run.preflight import member_configs
from src.run.records import read_metrics
from src.train import train
from src.training import model_cache
from src.training.device import Execution
from src.training.evaluate import classification_metrics
from src.training.trainer import SingleTrainer, StackedTrainer
from tests.conftest import TINY, make_cfg
from tests.test_fastpath import TRAINER, tiny_data

CPU = Execution(torch.device("cpu"), None, channels_last=False)
AUG = {"mixup_alpha": 0.4, "smoothing": 0.1}
SEEDS = [0, 3, 7]


def train_both(model_cfg: dict, epochs: int = 2):
    """The batched trainer and one separate Trainer per seed, after `epochs` epochs."""
    data = tiny_data()  # crops and flips on, so every random draw is compared
    multi = StackedTrainer(model_cfg, (3, 8, 8), data, TRAINER, AUG, CPU, SEEDS)
    single = [SingleTrainer(model_cache.fresh_model(model_cfg, (3, 8, 8), 4, CPU, s), data, TRAINER,
                      AUG, CPU, s) for s in SEEDS]
    stats = []
    for _ in range(epochs):
        stats.append((multi.train_epoch(), [t.train_epoch()[0] for t in single]))
    return data, multi, single, stats


def test_batched_mlp_matches_separate_runs_within_float_tolerance():
    data, multi, single, stats = train_both({"name": "mlp", "hidden_sizes": [16]})
    for batched, separate in stats:
        for b, s in zip(batched, separate):
            assert b.loss == pytest.approx(s.loss, rel=1e-6)
            assert b.acc == pytest.approx(s.acc, abs=1e-6)
    for k, tr in enumerate(single):
        sd = multi.member_state_dict(k)
        for name, value in tr.model.state_dict().items():
            torch.testing.assert_close(sd[name], value, rtol=1e-5, atol=1e-6)
        got = classification_metrics(multi.predict(data.test.x)[k], data.test.y)
        want = classification_metrics(tr.predict(data.test.x)[0], data.test.y)
        assert got["acc"] == want["acc"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_batched_training_twice_is_bit_identical():
    """The same code path twice gives the same bits: the determinism a rerun relies on."""
    mlp = {"name": "mlp", "hidden_sizes": [16]}
    _, first, _, stats_a = train_both(mlp)
    _, second, _, stats_b = train_both(mlp)
    assert [[(s.loss, s.acc) for s in b] for b, _ in stats_a] == \
        [[(s.loss, s.acc) for s in b] for b, _ in stats_b]
    for k in range(len(SEEDS)):
        for name, value in first.member_state_dict(k).items():
            assert torch.equal(second.member_state_dict(k)[name], value), name


def test_batched_cnn_matches_separate_runs_within_float_tolerance():
    cnn = {"name": "cnn", "channels": [4, 8], "dropout": 0.0}
    data, multi, single, stats = train_both(cnn)
    for batched, separate in stats:
        for b, s in zip(batched, separate):
            assert b.loss == pytest.approx(s.loss, rel=1e-5)
    for k, tr in enumerate(single):
        sd = multi.member_state_dict(k)
        for name, value in tr.model.state_dict().items():  # BN running stats included
            torch.testing.assert_close(sd[name].float(), value.float(), rtol=1e-4, atol=1e-5)
        got = classification_metrics(multi.predict(data.test.x)[k], data.test.y)
        want = classification_metrics(tr.predict(data.test.x)[0], data.test.y)
        assert got["acc"] == want["acc"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_member_folders_sit_beside_the_job_folder():
    over = TINY + ["trainer.parallel_seeds=[0,5]"]
    cfg = make_cfg(over + ["paths.run_dir='/o/cell/seed=0'"])
    dirs = [m.paths.run_dir for m in member_configs(cfg)]
    assert dirs == ["/o/cell/seed=0", "/o/cell/seed=5"]
    dirs = [m.paths.run_dir for m in member_configs(make_cfg(over, run_dir="/o/2024"))]
    assert dirs == ["/o/2024/seed=0", "/o/2024/seed=5"]


def test_each_member_resolves_interpolations_with_its_own_seed():
    """noise.seed=${trainer.seed} gives each member its own noise draw, as separate runs of
    those seeds have it (resolved before the seed was set, every member got the job's)."""
    over = TINY + ["trainer.parallel_seeds=[0,5]", "noise=symmetric",
                   "noise.seed=${trainer.seed}"]
    members = member_configs(make_cfg(over, run_dir="/o/cell"))
    assert [(m.trainer.seed, m.noise.seed) for m in members] == [(0, 0), (5, 5)]


def cfg_at(overrides: list[str], run_dir: Path):
    """make_cfg with a run_dir whose name holds '=' (quoted for Hydra's override grammar)."""
    return make_cfg(overrides + [f"paths.run_dir='{run_dir}'"])


def test_job_writes_one_normal_run_per_seed_equal_to_separate_runs(tmp_path):
    # On the CPU, where separate runs are reproducible to the bit (a GPU's atomics are not).
    over = TINY + ["trainer.epochs=1", "augmentation=mixup_smoothing", "noise=symmetric",
                   "noise.rate=0.2", "trainer.device=cpu"]
    out = train(cfg_at(over + ["trainer.parallel_seeds=[0,1]"], tmp_path / "cell" / "seed=0"),
                group="cell")
    assert len(out["runs"]) == 2
    for seed in (0, 1):
        run_dir = tmp_path / "cell" / f"seed={seed}"
        res = read_json(run_dir / "results.json")
        assert res["status"] == "completed" and res["seed"] == seed
        assert res["run_dir"] == str(run_dir) and res["group"] == "cell"
        assert (run_dir / "noise.json").exists() and (run_dir / "config.yaml").exists()
        assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]
        alone = train(make_cfg(over + [f"trainer.seed={seed}"], run_dir=tmp_path / f"a{seed}"))
        assert res["config_fingerprint"] == alone["config_fingerprint"]
        assert res["final_test_acc"] == pytest.approx(alone["final_test_acc"], abs=0.01)
        assert res["final_test_loss"] == pytest.approx(alone["final_test_loss"], rel=1e-3)
    # A rerun skips the completed seeds instead of training them again.
    again = train(cfg_at(over + ["trainer.parallel_seeds=[0,1]"], tmp_path / "cell" / "seed=0"),
                  group="cell")
    assert [r["finished_at"] for r in again["runs"]] == [r["finished_at"] for r in out["runs"]]


def test_lstm_is_refused_before_anything_is_written(tmp_path):
    base = [o for o in TINY if not o.startswith("model")]
    cfg = cfg_at(base + ["model=lstm", "trainer.parallel_seeds=[0,1]"], tmp_path / "seed=0")
    with pytest.raises(ConfigError, match="parallel_seeds"):
        train(cfg)
    assert not (tmp_path / "seed=0").exists()


def test_parallel_seeds_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="trainer.parallel_seeds"):
        train(make_cfg(TINY + ["trainer.parallel_seeds=[-1]"], run_dir=tmp_path))


def test_batched_cnn_trains_under_bf16_autocast():
    """BatchNorm under vmap and autocast: fp32 running stats with low-precision activations
    (the GPU default) must train and agree with separate bf16 runs to bf16 precision. On a
    GPU where there is one: CUDA's batch-norm backward is the one that checks dtypes."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = Execution(device, torch.bfloat16, channels_last=False)
    cnn = {"name": "cnn", "channels": [4, 8], "dropout": 0.0}
    data = tiny_data(device)
    multi = StackedTrainer(cnn, (3, 8, 8), data, TRAINER, AUG, bf16, SEEDS)
    single = [SingleTrainer(model_cache.fresh_model(cnn, (3, 8, 8), 4, bf16, s), data, TRAINER,
                            AUG, bf16, s) for s in SEEDS]
    batched, separate = multi.train_epoch(), [t.train_epoch()[0] for t in single]
    for b, s in zip(batched, separate):
        assert b.finite and b.loss == pytest.approx(s.loss, rel=2e-2)
    for k, tr in enumerate(single):
        for name, value in tr.model.state_dict().items():
            if value.dtype.is_floating_point:
                assert multi.member_state_dict(k)[name].dtype == value.dtype, name
