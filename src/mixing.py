"""Mixup and label smoothing: the mixed batch, its soft target and the loss, as tensor operations.

Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
Label smoothing: Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.

With both, the mixed target is smoothed. Smoothing is affine, s(y) = (1 - eps) * y + eps / K,
and lambda + (1 - lambda) = 1, so s(lam * y1 + (1 - lam) * y2) = lam * s(y1) + (1 - lam) * s(y2):
smoothing-then-mixing equals mixing-then-smoothing. The loss uses that identity in the cheap
form lam * CE_eps(y1) + (1 - lam) * CE_eps(y2), with lam and eps as tensors so that a
compiled step is not recompiled when they change.

Every function here works on one batch (B, ...) or on K members' batches stacked in front
(K, B, ...), so a single run and K seeds trained together (src.training.trainer) mix and
score their batches with the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def method_name(mixup_alpha: float, smoothing: float) -> str:
    """What an (alpha, eps) pair amounts to: none, mixup, smoothing or mixup_smoothing."""
    parts = [n for n, v in (("mixup", mixup_alpha), ("smoothing", smoothing)) if v != 0]
    return "_".join(parts) or "none"


def pair_with(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The partner rows of a batch: t[perm] for one batch, each member's own for K batches."""
    if perm.ndim == 1:
        return t[perm]
    members = torch.arange(perm.shape[0], device=perm.device)[:, None]
    return t[members, perm]


def mix(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
        perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch with its partners: (lam * x + (1 - lam) * x[perm], y[perm]).

    `lam` is a scalar for one batch or (K,) for K members; without `perm` nothing is mixed.
    """
    if perm is None:
        return x, y
    lam_x = lam if lam.ndim == 0 else lam.view(*lam.shape, *([1] * (x.ndim - lam.ndim)))
    return lam_x * x + (1 - lam_x) * pair_with(x, perm), pair_with(y, perm)


def smooth(target: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Label smoothing of a (soft) target over its last dimension: (1 - eps) * t + eps / K."""
    return target * (1 - eps) + eps / target.shape[-1]


def mixed_target(y: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor,
                 eps: float | torch.Tensor, num_classes: int) -> torch.Tensor:
    """The explicit soft target: smooth(lam * onehot(y) + (1 - lam) * onehot(y[perm]))."""
    onehot = F.one_hot(y, num_classes).float()
    return smooth(lam * onehot + (1 - lam) * onehot[perm], eps)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy against a soft target, averaged over the batch."""
    return (-target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixup_smoothing_loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
                         lam: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Cross entropy against smooth(lam * onehot(y) + (1 - lam) * onehot(y2)), without one-hots.

    logits (..., B, K), labels (..., B), lam of shape (...): the batch mean for each leading
    index, so K members trained together get their K losses from one call.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    uniform = -logp.mean(-1)  # cross entropy against the uniform target eps / K

    def ce(labels: torch.Tensor) -> torch.Tensor:
        return (1 - eps) * -logp.gather(-1, labels[..., None]).squeeze(-1) + eps * uniform

    lam = lam[..., None]  # over the batch
    return (lam * ce(y) + (1 - lam) * ce(y2)).mean(-1)


def lambda_weighted_hits(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
                         lam: torch.Tensor) -> torch.Tensor:
    """Training hits against the mixed labels: lam * #(pred == y) + (1 - lam) * #(pred == y2)."""
    pred = logits.detach().argmax(-1)
    return lam * (pred == y).sum(-1) + (1 - lam) * (pred == y2).sum(-1)
