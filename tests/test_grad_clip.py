"""trainer.grad_clip: null leaves every update (and every recorded run) as it was; a positive
number bounds each step's global gradient norm, per member when members train stacked."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import open_dict

from src.config import with_defaults
from src.config.validate import validate
from src.errors import ConfigError
from src.run.identity import fingerprint, flat_settings
from src.train import train
from src.training.optim import Optimisation, build_optimizer, clip_grad_norm, lr_factor
from tests.conftest import TINY, make_cfg

CPU = torch.device("cpu")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _loss(model: torch.nn.Module, scale: float = 1000.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    # Scaled up so that clipping at any usual norm would change the step.
    return scale * torch.nn.functional.cross_entropy(model(x), y)


def _optimisation(model: torch.nn.Module, **cfg) -> Optimisation:
    full = with_defaults("trainer", "default", cfg)
    return Optimisation(list(model.parameters()), [], full, CPU, 10,
                        torch.amp.GradScaler("cpu", enabled=False))


def _global_norm(model: torch.nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in model.parameters()])))


def test_grad_clip_null_is_the_update_without_clipping():
    """At null the update is exactly the one before the key existed: backward, step, schedule."""
    a, b = _model(), _model()
    opt = _optimisation(a, grad_clip=None)
    cfg = with_defaults("trainer", "default", {})
    ref = build_optimizer(list(b.parameters()), [], cfg, CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lr_factor(cfg, 10))
    for _ in range(3):
        opt.update(_loss(a))
        ref.zero_grad(set_to_none=True)
        _loss(b).backward()
        ref.step()
        sched.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert _global_norm(a) > 1.0  # so that a clip at 1 would have changed it


def test_grad_clip_bounds_the_global_norm_of_each_step():
    model = _model()
    before = copy.deepcopy(model)
    opt = _optimisation(model, grad_clip=0.5)
    opt.update(_loss(model))
    assert _global_norm(model) == pytest.approx(0.5, rel=1e-4)  # the gradient the step took
    # The step is SGD's on the clipped gradient, as torch's own clip gives it.
    ref = _optimisation(before, grad_clip=None)
    ref.optimizer.zero_grad()
    _loss(before).backward()
    torch.nn.utils.clip_grad_norm_(before.parameters(), 0.5)
    ref.optimizer.step()
    for p, q in zip(model.parameters(), before.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


def test_a_gradient_below_the_bound_is_left_alone():
    a, b = _model(), _model()
    _optimisation(a, grad_clip=1e9).update(_loss(a))
    _optimisation(b, grad_clip=None).update(_loss(b))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_stacked_members_are_clipped_each_by_its_own_norm():
    """Member 0's gradient is far above the bound, member 1's below: each is clipped as its
    separate run would be, and member 1 not at all (no coupling through a shared norm)."""
    models = [_model(0), _model(1)]
    losses = [_loss(models[0], 1000.0), _loss(models[1], 1e-3)]
    for loss in losses:
        loss.backward()
    stacked = [torch.stack([p.detach() for p in ps]).requires_grad_()
               for ps in zip(*(m.parameters() for m in models))]
    for t, ps in zip(stacked, zip(*(m.parameters() for m in models))):
        t.grad = torch.stack([p.grad.clone() for p in ps])
    clip_grad_norm(stacked, 1.0, stacked=True)
    for k, m in enumerate(models):
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)  # its separate run
        alone = [p.grad for p in m.parameters()]
        for t, g in zip(stacked, alone):
            assert torch.allclose(t.grad[k], g, rtol=1e-5, atol=1e-8)
        assert (float(norm) > 1.0) == (k == 0)
    unclipped = _model(1)
    _loss(unclipped, 1e-3).backward()
    assert torch.equal(stacked[0].grad[1], next(unclipped.parameters()).grad)  # untouched


def test_null_keeps_the_fingerprint_of_runs_recorded_before_the_key(tmp_path):
    cfg = make_cfg([], run_dir=tmp_path)
    old = cfg.copy()
    with open_dict(old):
        del old.trainer.grad_clip
    assert fingerprint(cfg) == fingerprint(old)
    assert "trainer.grad_clip" not in flat_settings(cfg)
    clipped = make_cfg(["trainer.grad_clip=1.0"], run_dir=tmp_path)
    assert fingerprint(clipped) != fingerprint(cfg)
    assert flat_settings(clipped)["trainer.grad_clip"] == 1.0


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "true", "abc"])
def test_grad_clip_refuses_what_is_not_a_positive_number(bad, tmp_path):
    allowed = r"trainer\.grad_clip=.*null \(off\) or a finite number > 0"
    with pytest.raises(ConfigError, match=allowed):
        validate(make_cfg([f"trainer.grad_clip={bad}"], run_dir=tmp_path))


def test_a_clipped_run_trains_and_differs_from_the_unclipped_one(tmp_path):
    free = train(make_cfg(TINY, run_dir=tmp_path / "free"))
    clipped = train(make_cfg([*TINY, "trainer.grad_clip=0.01"], run_dir=tmp_path / "clip"))
    assert free["status"] == clipped["status"] == "completed"
    assert clipped["config"]["trainer.grad_clip"] == 0.01
    assert clipped["final_test_loss"] != free["final_test_loss"]


def test_seeds_trained_stacked_with_a_clip_match_their_separate_runs(tmp_path):
    base = [*TINY, "trainer.grad_clip=0.05"]
    together = train(make_cfg([*base, "trainer.parallel_seeds=[0,1]"],
                              run_dir=tmp_path / "together"))
    for seed, run in zip((0, 1), together["runs"]):
        alone = train(make_cfg([*base, f"trainer.seed={seed}"], run_dir=tmp_path / f"s{seed}"))
        assert run["final_test_loss"] == pytest.approx(alone["final_test_loss"], rel=1e-4)
