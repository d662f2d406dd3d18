"""A run that collapses is recorded as diverged, never as completed, and a member of a batch
that fails keeps its failure to itself.

Negative smoothing (uniform mass m < 0) makes the loss unbounded below: runaway logits drive it
to -1e19 while accuracy falls to chance. The divergence rule looks both ways (src.run.lifecycle:
`divergence`, `collapse_bound`). Members trained as one batched model share one optimizer step:
a diverged member is stopped (its loss and gradients masked out), and what would couple
members (fp16's one loss scale, dropout's one stream) is refused before they are stacked
(src.config.validate.cannot_stack).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hydra_plugins.lsmix_batched_launcher.batched_launcher import _plan
from src.config.validate import cannot_stack, validate
from src.errors import ConfigError
from src.files import read_json
from src.run.batches import check_batch
from src.run.lifecycle import collapse_bound, divergence
from src.train import LaunchedJob, train, train_batch
from src.training.trainer import EpochStats, StackedTrainer
from tests.conftest import make_cfg
from tests.test_batched_launcher import BASE, CPU, TINY_MLP, cell, cfg_in
from tests.test_fastpath import TRAINER, tiny_data


def stats(loss: float, acc: float = 0.9) -> EpochStats:
    return EpochStats(loss, acc, 1.0, 100, 0.1, finite=math.isfinite(loss))


# ------------------------------------------------------------------ the rule, both ways


def test_a_loss_collapsed_far_below_zero_is_divergence_for_negative_smoothing():
    floor = collapse_bound(-5.0, 10)
    assert floor == pytest.approx(-5 * (100 + math.log(10)))
    assert "ran away" in divergence(stats(-1.4e19), 10, 10, True, mass=-5.0)
    assert "ran away" in divergence(stats(floor - 1), 2, 10, True, mass=-5.0)
    # A learning model's loss under the same mass: moderately negative, not diverged.
    assert divergence(stats(-30.0), 2, 10, True, mass=-5.0) is None


def test_targets_without_negative_entries_allow_no_negative_loss_at_all():
    assert collapse_bound(0.0, 10) == 0.0 and collapse_bound(0.2, 10) == 0.0
    assert divergence(stats(-1e-3), 5, 10, True, mass=0.1) is not None
    assert divergence(stats(0.3), 5, 10, True, mass=0.1) is None


def test_non_finite_exploded_and_chance_are_still_divergence():
    assert "non-finite" in divergence(stats(float("nan")), 1, 10, True)
    assert "above" in divergence(stats(1e6), 1, 10, True)
    assert "chance" in divergence(stats(2.3, acc=0.1), 3, 10, True)
    assert divergence(stats(2.3, acc=0.1), 3, 10, False) is None  # random labels: no rule


@pytest.mark.slow
def test_negative_smoothing_that_runs_away_ends_diverged_not_completed(tmp_path):
    """eps = -5 from the first step: the loss runs to -1e5 within two epochs and the test
    accuracy to chance; before, the run ended `completed` and entered the tables."""
    res = train(make_cfg(TINY_MLP + ["augmentation=smoothing", "augmentation.smoothing=-5",
                                     "trainer.epochs=6"], run_dir=tmp_path / "run"))
    assert res["status"] == "diverged", res
    assert "ran away" in res["error"]
    assert read_json(tmp_path / "run" / "results.json")["status"] == "diverged"


# ------------------------------------------------------------------ members of a batch


def test_a_stopped_member_touches_no_other_members_update():
    """Members eps = 0 and 0.1 beside one at eps = -10000: once it is stopped, the others'
    weights after an epoch equal those of a batch without it, and its gradients are zeroed
    whatever they held (NaN included)."""
    data = tiny_data()
    model = {"name": "mlp", "hidden_sizes": [16]}
    augs = [{**BASE, "mixup_alpha": 0.0, "smoothing": e, "smoothing_start_epoch": 0}
            for e in (0.0, 0.1, -10000.0)]
    three = StackedTrainer(model, (3, 8, 8), data, TRAINER, augs, CPU, [0, 1, 2])
    two = StackedTrainer(model, (3, 8, 8), data, TRAINER, augs[:2], CPU, [0, 1])
    with torch.no_grad():  # the bad member is already NaN
        for p in three.params.values():
            p[2].fill_(float("nan"))
    three.stop_member(2)
    three.train_epoch()
    two.train_epoch()
    for k in (0, 1):
        for name, value in two.member_state_dict(k).items():
            torch.testing.assert_close(three.member_state_dict(k)[name], value,
                                       rtol=1e-5, atol=1e-6, msg=name)
        assert torch.isfinite(three.predict(data.test.x)[k]).all()


def test_a_diverged_member_ends_alone_and_its_batch_mates_complete(tmp_path):
    jobs = [LaunchedJob(cfg_in(cell(0.0, e, 0), tmp_path / f"e={e}"), group=f"e={e}")
            for e in (0.0, 0.1, -10000.0)]
    train_batch(jobs)
    results = [read_json(Path(j.cfg.paths.run_dir) / "results.json") for j in jobs]
    assert [r["status"] for r in results] == ["completed", "completed", "diverged"]
    for r, e in zip(results[:2], (0.0, 0.1)):
        alone = train(make_cfg(cell(0.0, e, 0), run_dir=tmp_path / f"alone{e}"))
        assert r["final_test_acc"] == pytest.approx(alone["final_test_acc"], abs=0.01)


def test_fp16_and_dropout_runs_are_never_stacked():
    mlp = {"name": "mlp", "hidden_sizes": [16], "dropout": 0.0}
    assert cannot_stack(mlp, "off") is None and cannot_stack(mlp, "bf16") is None
    assert "fp16" in cannot_stack(mlp, "fp16")
    assert "dropout" in cannot_stack({**mlp, "dropout": 0.1}, "off")
    assert "vmap" in cannot_stack({"name": "lstm"}, "off")
    fp16 = [make_cfg(cell(0.0, e, 0, ["trainer.amp=fp16"]), run_dir=Path(f"/o/{e}"))
            for e in (0.0, 0.1, -10000.0)]
    # One job at a time: each its own loss scale.
    assert _plan(fp16, 16, stack="always")[0] == [[0], [1], [2]]
    with pytest.raises(ConfigError, match="fp16"):
        check_batch(fp16[:2])
    dropout = [make_cfg(cell(0.0, e, 0, ["model.dropout=0.2"]), run_dir=Path(f"/o/d{e}"))
               for e in (0.0, 0.1)]
    assert _plan(dropout, 16, stack="always")[0] == [[0], [1]]
    with pytest.raises(ConfigError, match="parallel_seeds.*fp16"):
        validate(make_cfg(TINY_MLP + ["trainer.amp=fp16", "trainer.parallel_seeds=[0,1]"],
                          run_dir=Path("/o/p")))


@pytest.mark.slow
def test_a_batched_fp16_sweep_gives_each_run_its_separate_accuracy(tmp_path):
    """The sweep that froze its batch (eps = 0 and 0.1 beside -10000 under fp16: 0.27 and
    0.26 where separate runs reach 0.97): each run now trains alone, with its own scale."""
    jobs = [LaunchedJob(cfg_in(cell(0.0, e, 0, ["trainer.amp=fp16"]), tmp_path / f"e={e}"),
                        group=f"e={e}") for e in (0.0, 0.1, -10000.0)]
    from hydra_plugins.lsmix_batched_launcher.batched_launcher import _plan as plan
    batches, _ = plan([j.cfg for j in jobs], 16, stack="always")
    for batch in batches:
        train_batch([jobs[i] for i in batch])
    results = [read_json(Path(j.cfg.paths.run_dir) / "results.json") for j in jobs]
    assert [r["status"] for r in results] == ["completed", "completed", "diverged"]
    for r, e in zip(results[:2], (0.0, 0.1)):
        alone = train(make_cfg(cell(0.0, e, 0, ["trainer.amp=fp16"]),
                               run_dir=tmp_path / f"alone{e}"))
        assert "trained_with" not in r
        assert r["final_test_acc"] == alone["final_test_acc"]


def test_the_chance_rule_counts_passes_over_the_data_not_capped_epochs():
    """With trainer.steps_per_epoch capping an epoch, five short epochs are not three passes:
    a model still at chance then is not yet judged."""
    assert divergence(stats(2.3, acc=0.1), 5, 10, True, passes=0.5) is None
    assert "chance" in divergence(stats(2.3, acc=0.1), 5, 10, True, passes=3.0)


def test_a_resumed_batch_keeps_its_diverged_member_and_a_rerun_skips_it(tmp_path):
    """The batch's checkpoint holds why a member diverged: resumed from it (its records lost,
    as after a pre-emption), the member is diverged again, not left "running"; and a rerun of
    the finished sweep skips a diverged run as final (trained again it could survive)."""
    jobs = [LaunchedJob(cfg_in(cell(0.0, e, 0, ["trainer.keep_checkpoint=true"]),
                               tmp_path / f"e={e}"), group=f"e={e}")
            for e in (0.0, 0.1, -10000.0)]
    train_batch(jobs)
    paths = [Path(j.cfg.paths.run_dir) / "results.json" for j in jobs]
    first = [read_json(p) for p in paths]
    assert [r["status"] for r in first] == ["completed", "completed", "diverged"]
    for p in paths:  # records lost; the kept checkpoint (in the first member's folder) stays
        p.unlink()
    train_batch(jobs)
    again = [read_json(p) for p in paths]
    assert [r["status"] for r in again] == ["completed", "completed", "diverged"]
    assert again[2]["error"] == first[2]["error"]
    before = paths[2].stat().st_mtime_ns
    train_batch(jobs)
    assert paths[2].stat().st_mtime_ns == before  # skipped, not trained again


def test_a_linear_decay_starting_after_the_last_epoch_keeps_the_lr():
    from src.config import with_defaults
    from src.training.optim import lr_factor

    cfg = with_defaults("trainer", "coteaching", {"epochs": 79})
    factor = lr_factor(with_defaults("trainer", "default", cfg), 10)
    assert [factor(s) for s in (0, 789)] == [1.0, 1.0]  # every trained step: constant
    assert factor(790) == 0.0  # the scheduler's step after the last one: no division by zero
