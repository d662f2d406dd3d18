"""The optimisation of a run: optimizer, learning-rate schedule, loss scaler, and the one
update every training loop takes (the trainer, K members at once, and the bench's bare loop)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch


def build_optimizer(decay: list[torch.Tensor], no_decay: list[torch.Tensor],
                    cfg: Mapping[str, Any], device: torch.device, fused: bool | None = None):
    """SGD (momentum, Nesterov) or AdamW over two groups: weight decay on `decay` only.

    `fused` defaults to CUDA only: fused kernels exist for CUDA; on CPU the foreach path is
    the fast one. A fused optimizer gets its lr as a tensor (float64, on the CPU), which the
    scheduler updates in place (`fill_`): the value is exactly the float's, the kernel reads
    a CPU scalar without a device sync, and a compiled step is not specialised on it.
    """
    groups = [{"params": decay, "weight_decay": float(cfg["weight_decay"])},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" if fused is None else fused
    lr: float | torch.Tensor = float(cfg["lr"])
    extra = {}
    if fused:
        extra, lr = {"fused": True}, torch.tensor(lr, dtype=torch.float64)
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]),
                               nesterov=bool(cfg["nesterov"]) and float(cfg["momentum"]) > 0,
                               **extra)
    return torch.optim.AdamW(groups, lr=lr, **extra)


def lr_factor(cfg: Mapping[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step: warm-up, then cosine, multistep, constant, or
    linear: constant before epoch `decay_start` (1-based), then (E + 1 - e) / (E + 1 -
    decay_start) at epoch e of E, set once an epoch as Co-teaching's code (Han et al. 2018)
    sets its alpha_plan: with E = 199 trained epochs and decay_start = 80 its exact plan."""
    total = int(cfg["epochs"]) * steps_per_epoch
    warmup = int(float(cfg["warmup_epochs"]) * steps_per_epoch)
    epochs = int(cfg["epochs"])
    # Milestones up to 1 are fractions of the run, larger ones are epochs.
    milestones = [m * epochs if m <= 1 else m for m in cfg["milestones"]]
    gamma, kind = float(cfg["gamma"]), cfg["schedule"]
    decay_start = int(cfg["decay_start"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            t = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if kind == "multistep":
            epoch = step / steps_per_epoch
            return gamma ** sum(epoch >= m for m in milestones)
        if kind == "linear":
            epoch = step // steps_per_epoch + 1
            start = max(decay_start, 1)
            if epoch < start:
                return 1.0
            # max(): the scheduler's step after the last one, and a start after the run
            return max(epochs + 1 - epoch, 0) / max(epochs + 1 - start, 1)
        return 1.0

    return factor


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float, stacked: bool) -> None:
    """Scale the gradients so that their global L2 norm is at most `max_norm`, as
    torch.nn.utils.clip_grad_norm_ does (factor max_norm / (norm + 1e-6), never above 1).

    `stacked`: every tensor holds M members along its first dimension (StackedTrainer); each
    member's norm is its own (over its slices of all tensors) and so is its factor, so a
    member is clipped exactly as its separate run is, whatever it is batched with.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if not stacked:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    members = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(members, -1), dim=1)
                         for g in grads]).norm(dim=0)  # (M,)
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(-1, *[1] * (g.ndim - 1)).to(g.dtype))


class Optimisation:
    """Optimizer, schedule and scaler of one trainer, and its one update per step."""

    def __init__(self, decay: list[torch.Tensor], no_decay: list[torch.Tensor],
                 cfg: Mapping[str, Any], device: torch.device, steps_per_epoch: int,
                 scaler: torch.amp.GradScaler, stacked: bool = False) -> None:
        """`stacked`: the parameters hold M members along their first dimension (gradient
        clipping is then per member)."""
        self.optimizer = build_optimizer(decay, no_decay, cfg, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, steps_per_epoch))
        self.scaler = scaler
        self.beta1_after, self.decay_start = cfg["beta1_after_decay"], int(cfg["decay_start"])
        # trainer.grad_clip: null (off) or the largest global gradient norm of a step.
        self.grad_clip = None if cfg["grad_clip"] is None else float(cfg["grad_clip"])
        self.params, self.stacked = [*decay, *no_decay], stacked

    def begin_epoch(self, epoch: int) -> None:
        """Once an epoch (1-based): Adam's beta1 from `decay_start` on, as Co-teaching's code
        sets betas=(0.1, 0.999) with its lr decay (the optimizer's state keeps it on resume)."""
        if self.beta1_after is not None and epoch >= max(self.decay_start, 1):
            for group in self.optimizer.param_groups:
                group["betas"] = (float(self.beta1_after), group["betas"][1])

    def update(self, loss: torch.Tensor,
               mask_grads: Callable[[], None] | None = None) -> None:
        """Backward of `loss`, gradient clipping (trainer.grad_clip), an optimizer step
        (through the fp16 scaler), the schedule's step.

        K members trained together pass the sum of their losses: the sum's gradient with
        respect to member k's parameters is member k's own gradient. `mask_grads` runs between
        the backward and the step (zeroing the gradients of members that stopped).
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if mask_grads is not None:
            mask_grads()
        if self.grad_clip is not None:
            # The norm of the true gradients: fp16's scaled ones are unscaled first (the
            # scaler's step then does not unscale them again).
            self.scaler.unscale_(self.optimizer)
            clip_grad_norm(self.params, self.grad_clip, self.stacked)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
