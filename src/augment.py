"""Mixup, label smoothing and the batch-wide image augmentations, as tensor operations.

Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
Label smoothing: Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.

With both, the mixed target is smoothed. Smoothing is affine, s(y) = (1 - eps) * y + eps / K,
and lambda + (1 - lambda) = 1, so s(lam * y1 + (1 - lam) * y2) = lam * s(y1) + (1 - lam) * s(y2):
smoothing-then-mixing equals mixing-then-smoothing. The loss uses that identity in the cheap
form lam * CE_eps(y1) + (1 - lam) * CE_eps(y2), with lam and eps as tensors so that a
compiled step is not recompiled when they change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def method_name(mixup_alpha: float, smoothing: float) -> str:
    """What an (alpha, eps) pair amounts to: none, mixup, smoothing or mixup_smoothing."""
    parts = [n for n, v in (("mixup", mixup_alpha), ("smoothing", smoothing)) if v > 0]
    return "_".join(parts) or "none"


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
    index, so K seeds trained together (src.multiseed) get their K losses from one call.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    uniform = -logp.mean(-1)  # cross entropy against the uniform target eps / K

    def ce(labels: torch.Tensor) -> torch.Tensor:
        return (1 - eps) * -logp.gather(-1, labels[..., None]).squeeze(-1) + eps * uniform

    lam = lam[..., None]  # over the batch
    return (lam * ce(y) + (1 - lam) * ce(y2)).mean(-1)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Random crops of a zero-padded batch, one offset per image, as one gather."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=x.device)
    rows = dy + torch.arange(h, device=x.device)  # (B, H)
    cols = dx + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)
