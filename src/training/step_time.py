"""How long a model's training step and evaluation forward take on a device, timed on random
images: what a study's plan estimates its time from (src.sweep.plan) and what the batched
launcher decides stacking by (src.run.batches.stacking_pays)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


def _fastest(fn: Any, device: torch.device, budget_s: float = 3.0) -> float:
    """The fastest of a few timed calls of `fn` after one untimed (allocator warm-up): at most
    10, and no more once `budget_s` is spent (a large model on a CPU takes seconds a step). The
    fastest is what the machine does undisturbed: another process only ever slows a call."""
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()
    times: list[float] = []
    while len(times) < 10 and (len(times) < 2 or sum(times) < budget_s):
        times.append(timed())
    return min(times)


# Timings made in this process, by what they depend on: a study's plan and the batched
# launcher's stacking rule ask for the same model's step, and its settings (noise rates,
# validation splits) share it; timing it once saves about 0.7 s a repeat on 2 CPU cores.
_TIMED: dict[tuple, tuple[float, float]] = {}


def step_seconds(cfg: DictConfig, batch: int, device: str | None = None,
                 forward: bool = True) -> tuple[float, float]:
    """The time of a training step (forward, backward, SGD update) of the run's model at its
    batch size, and of an evaluated image (forwards of up to 256 images; nan unless
    `forward`), on random images of its dataset's shape, eager and in fp32 (compiled or bf16
    runs are faster), on the GPU when there is one. Timed once per process for a model,
    image shape, class count, batch size, evaluation batch, device and thread count."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and
                                     str(cfg.trainer.device) != "cpu" else "cpu"))
    shape = tuple(int(v) for v in cfg.dataset.image_shape)
    k = int(cfg.dataset.num_classes)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    eval_batch = min(int(cfg.trainer.eval_batch_size), 256)
    key = (repr(sorted(model_cfg.items())), shape, k, int(batch), eval_batch, str(device),
           torch.get_num_threads())
    known = _TIMED.get(key)
    if known is None or (forward and math.isnan(known[1])):
        known = _TIMED[key] = _timed(model_cfg, shape, k, batch, eval_batch, device, forward)
    return known if forward else (known[0], math.nan)


def _timed(model_cfg: dict, shape: tuple[int, ...], k: int, batch: int, eval_batch: int,
           device: torch.device, forward: bool) -> tuple[float, float]:
    from src.models import build_model

    model = build_model(model_cfg, shape, k).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, k, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    x_eval = torch.randn(eval_batch, *shape, device=device)

    def forward_pass() -> None:
        with torch.no_grad():
            model(x_eval)

    return _fastest(step, device), \
        _fastest(forward_pass, device) / eval_batch if forward else math.nan
