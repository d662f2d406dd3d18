"""Mixing and label smoothing: the mixed batch, its soft target and the loss, as tensor operations.

Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019. Manifold Mixup: Verma et al., ICML 2019 (src.models.manifold), at one
stage or, as their code does, at a stage drawn per batch among several (`mix_layer` a list, or
`default`: the model's MANIFOLD_LAYERS).
Label smoothing: Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016; with any
eps < 1, negative included: Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy
Labels", ICML 2022 (generalised label smoothing).

Smoothing is affine in the target. Both conventions are one map s(t) = (1 - m) * t + m / K with
a uniform mass m: smoothing over all classes (`all`, t -> (1 - eps) * t + eps / K) has m = eps;
smoothing over the other classes (`others`, 1 - eps on the true class and eps / (K - 1) on each
other one, OpenNMT's convention) has m = eps * K / (K - 1). Since lambda + (1 - lambda) = 1,
s(lam * y1 + (1 - lam) * y2) = lam * s(y1) + (1 - lam) * s(y2): smoothing the mixed target equals
mixing the smoothed targets. The loss uses that identity in the cheap form
lam * CE_m(y1) + (1 - lam) * CE_m(y2), with lam and m as tensors so that a compiled step is not
recompiled when they change.

The settings follow timm's `Mixup` (timm/data/mixup.py): CutMix boxes from lambda or from a
min-max range, lambda corrected to the pasted area, a probability of mixing at all, a
probability of CutMix instead of Mixup, and one lambda per batch, per pair or per sample. The
partners are a random permutation of the batch (the Mixup paper's code, the default) or the
reversed batch (timm's). Random numbers are drawn on the host once per epoch (`draw_epoch`,
from the member's numpy generator) and the permutations on the device (from its torch
generator), so a step never waits for the host and a checkpoint resumes the exact draws.

Every device function here works on one batch (B, ...) or on M members' batches stacked in
front (M, B, ...), so a single run and M runs trained together (src.training.trainer) mix and
score their batches with the same code. K is the number of classes throughout. lambda has
shape (...) for one per batch, (..., B) for
one per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from src.config import with_defaults
from src.models.manifold import DEFAULT, INPUT, choose_layers

# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class MixSettings:
    """The mixing keys of the augmentation config (their defaults and meaning:
    conf/augmentation/none.yaml)."""

    mixup_alpha: float
    cutmix_alpha: float  # 0 = no CutMix (1 whenever cutmix_minmax is set, as timm)
    cutmix_minmax: tuple[float, float] | None  # box sides as fractions of the image
    correct_lam: bool  # lambda = 1 - the pasted box's share of the image
    mix_prob: float  # probability that a batch (or pair, or sample) is mixed at all
    switch_prob: float  # probability of CutMix instead of Mixup when both are on
    mix_mode: str  # one lambda per "batch", per "pair", per sample ("elem")
    pairing: str  # partners: a random "permutation", or the reversed batch
    # "input" (Mixup of the images), one model stage's hidden state, several stages (a tuple:
    # one drawn per batch, Verma et al.) or "default" (the model's, resolved by `for_model`)
    mix_layer: str | tuple[str, ...]

    @classmethod
    def from_config(cls, aug: Mapping[str, Any]) -> MixSettings:
        """The mixing keys of an augmentation section (a partial mapping takes the rest from
        conf/augmentation/none.yaml: nothing mixed)."""
        aug = with_defaults("augmentation", "none", aug)
        minmax = aug["cutmix_minmax"]
        # A min-max range turns CutMix on at alpha 1, whatever cutmix_alpha says, as timm's
        # Mixup forces it (its boxes' sides come from the range, lambda from their area).
        cutmix_alpha = 1.0 if minmax is not None else float(aug["cutmix_alpha"])
        return cls(
            mixup_alpha=float(aug["mixup_alpha"]),
            cutmix_alpha=cutmix_alpha,
            cutmix_minmax=None if minmax is None else (float(minmax[0]), float(minmax[1])),
            correct_lam=bool(aug["correct_lam"]),
            mix_prob=float(aug["mix_prob"]),
            switch_prob=float(aug["switch_prob"]),
            mix_mode=str(aug["mix_mode"]),
            pairing=str(aug["pairing"]),
            mix_layer=_layer_setting(aug["mix_layer"]),
        )

    def for_model(self, stages: tuple[str, ...], eligible: tuple[str, ...]) -> MixSettings:
        """These settings with `mix_layer` resolved for a model with these stages and
        MANIFOLD_LAYERS `eligible`: one stage, or a tuple of several to draw among."""
        return replace(self, mix_layer=_layer_setting(
            choose_layers(self.mix_layer, stages, eligible)))

    @property
    def mixes(self) -> bool:
        """Whether any batch is ever mixed."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    @property
    def manifold(self) -> bool:
        """Whether the model mixes a hidden state (Manifold Mixup) instead of the images."""
        return self.mix_layer != INPUT

    @property
    def drawn(self) -> bool:
        """Whether each batch draws the stage it is mixed at (several stages)."""
        return isinstance(self.mix_layer, tuple)

    @property
    def layers(self) -> tuple[str, ...]:
        """The stages mixed at (one, or those drawn among)."""
        return self.mix_layer if isinstance(self.mix_layer, tuple) else (self.mix_layer,)


def _layer_setting(value: Any) -> str | tuple[str, ...]:
    """`mix_layer` as a setting: a name, or a tuple of several (a list of one is that one, so
    that it trains exactly as the name alone)."""
    if isinstance(value, str):
        return value
    names = tuple(str(v) for v in value)
    return names[0] if len(names) == 1 else names


def method_name(mixup_alpha: float, smoothing: float, cutmix_alpha: float = 0.0,
                mix_layer: str | tuple[str, ...] = INPUT, mix_prob: float = 1.0) -> str:
    """What the values amount to: the mixing (mixup, manifold_mixup, cutmix, mixup_cutmix for
    timm's switch between the two, nothing when no batch is mixed), then `smoothing` for any
    eps != 0, negative included, joined by "_"; "none" for plain ERM."""
    parts = []
    if mix_prob > 0:
        if mixup_alpha != 0:
            parts.append("mixup" if mix_layer == INPUT else "manifold_mixup")
        if cutmix_alpha != 0:
            parts.append("cutmix")
    if smoothing != 0:
        parts.append("smoothing")
    return "_".join(parts) or "none"


# ------------------------------------------------------------------ smoothing


def uniform_mass(eps: float, smoothing_to: str, num_classes: int) -> float:
    """The uniform mass m of (1 - m) * t + m / K that smoothing eps over `smoothing_to` is."""
    if smoothing_to == "all":
        return eps
    return eps * num_classes / (num_classes - 1)


def smooth(target: torch.Tensor, eps: float | torch.Tensor,
           smoothing_to: str = "all") -> torch.Tensor:
    """Label smoothing of a (soft) target over its last dimension K: (1 - eps) * t + eps / K
    (`all`), or (1 - eps - eps / (K - 1)) * t + eps / (K - 1) (`others`)."""
    k = target.shape[-1]
    if smoothing_to == "all":
        return target * (1 - eps) + eps / k
    return target * (1 - eps - eps / (k - 1)) + eps / (k - 1)


def mixed_target(y: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor,
                 eps: float | torch.Tensor, num_classes: int,
                 smoothing_to: str = "all") -> torch.Tensor:
    """The explicit soft target: smooth(lam * onehot(y) + (1 - lam) * onehot(y[perm]));
    lam a number, or one per sample (B,)."""
    onehot = F.one_hot(y, num_classes).float()
    if torch.is_tensor(lam) and lam.ndim > 0:
        lam = lam[..., None]
    return smooth(lam * onehot + (1 - lam) * onehot[perm], eps, smoothing_to)


# ------------------------------------------------------------------ host draws, once an epoch


@dataclass
class EpochDraws:
    """One member's mixing draws for an epoch, for `steps` batches (a `shape` of (steps,) with
    one lambda per batch, (steps, B) with one per sample; in pair mode each pair uses the
    draws of its first member)."""

    lam: np.ndarray  # float: the weight of each sample's own label (CutMix: after correction)
    cut: np.ndarray | None  # bool: CutMix instead of Mixup (None: the same choice throughout)
    boxes: np.ndarray | None  # int64 (..., 4): yl, yh, xl, xh pasted from the partner (None:
    #                           no CutMix); empty where a sample is not cut
    layer: np.ndarray | None = None  # int64 (steps,): each batch's stage, an index into
    #                                  MixSettings.layers (None: one stage throughout)


def box_around(cy: np.ndarray, cx: np.ndarray, cut_h: np.ndarray, cut_w: np.ndarray,
               h: int, w: int) -> np.ndarray:
    """CutMix's box of sides (cut_h, cut_w) centred on (cy, cx), clipped to the image
    (Yun et al.'s rand_bbox; the lower half-side rounded up as timm does)."""
    yl = np.clip(cy - cut_h // 2, 0, h)
    yh = np.clip(cy + (cut_h + 1) // 2, 0, h)
    xl = np.clip(cx - cut_w // 2, 0, w)
    xh = np.clip(cx + (cut_w + 1) // 2, 0, w)
    return np.stack([yl, yh, xl, xh], axis=-1).astype(np.int64)


def box_lam(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """1 - the share of the image a box covers: the label weight that matches the pixels."""
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
    return 1.0 - area / float(h * w)


def cutmix_boxes(rng: np.random.Generator, lam: np.ndarray | None, hw: tuple[int, int],
                 minmax: tuple[float, float] | None, correct_lam: bool,
                 shape: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and their lambdas: a box of area about 1 - lam around a uniform centre, or sides
    drawn from the min-max fractions at a uniform position (lambda then always from the area)."""
    h, w = hw
    if minmax is None:
        ratio = np.sqrt(1.0 - lam)
        cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        cy = rng.integers(0, h, shape)
        cx = rng.integers(0, w, shape)
        boxes = box_around(cy, cx, cut_h, cut_w, h, w)
    else:
        lo, hi = minmax
        cut_h = rng.integers(int(h * lo), int(h * hi), shape)
        cut_w = rng.integers(int(w * lo), int(w * hi), shape)
        yl = rng.integers(0, h - cut_h + 1)
        xl = rng.integers(0, w - cut_w + 1)
        boxes = np.stack([yl, yl + cut_h, xl, xl + cut_w], axis=-1).astype(np.int64)
    if correct_lam or minmax is not None:
        lam = box_lam(boxes, h, w)
    return boxes, lam


def draw_epoch(mix: MixSettings, rng: np.random.Generator, steps: int, batch_size: int,
               hw: tuple[int, int]) -> EpochDraws:
    """The epoch's lambdas, CutMix choices and boxes for one member, from its generator.

    Mixup's Beta draws come first, as they always have: Mixup alone with every batch mixed
    draws exactly `rng.beta(alpha, alpha, steps)` and nothing else. The stage of each batch
    (several stages only) is drawn last, uniformly, as Verma et al.'s code draws k.
    """
    if mix.mix_layer == DEFAULT:
        raise ValueError("mix_layer 'default' is the model's: resolve it with for_model first")
    shape: int | tuple[int, int] = steps if mix.mix_mode == "batch" else (steps, batch_size)
    lam = rng.beta(mix.mixup_alpha, mix.mixup_alpha, shape) if mix.mixup_alpha > 0 else None
    cut = boxes = None
    if mix.cutmix_alpha > 0:
        if lam is not None:  # both on: CutMix with probability switch_prob, else Mixup
            cut = rng.random(shape) < mix.switch_prob
        lam_cut = (rng.beta(mix.cutmix_alpha, mix.cutmix_alpha, shape)
                   if mix.cutmix_minmax is None else None)
        boxes, lam_cut = cutmix_boxes(rng, lam_cut, hw, mix.cutmix_minmax, mix.correct_lam,
                                      shape)
        lam = lam_cut if lam is None else np.where(cut, lam_cut, lam)
    if mix.mix_prob < 1:
        mixed = rng.random(shape) < mix.mix_prob
        lam = np.where(mixed, lam, 1.0)
        if cut is not None:
            cut &= mixed
        if boxes is not None:
            boxes[~mixed] = 0
    if cut is not None:
        boxes[~cut] = 0  # Mixup's samples paste nothing
    layer = rng.integers(0, len(mix.layers), steps) if mix.drawn else None
    return EpochDraws(lam, cut, boxes, layer)


# ------------------------------------------------------------------ device: partners and mixing


def partners(batch_size: int, mix: MixSettings, gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """Each sample's partner: a random permutation (drawn from `gen`), or the reversed batch.

    A pair (mix_mode pair) needs partners that pair up (i's partner has i as its partner): with
    permutation pairing the permutation's first and last entries, second and second-to-last,
    ... form the pairs, a uniformly random matching. With an odd batch the middle sample is its
    own partner (mixing a sample with itself changes nothing).
    """
    if mix.pairing == "flip":
        return torch.arange(batch_size - 1, -1, -1, device=device)
    perm = torch.randperm(batch_size, generator=gen, device=device)
    if mix.mix_mode != "pair":
        return perm
    matched = torch.empty_like(perm)
    matched[perm] = perm.flip(0)
    return matched


def share_within_pairs(t: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Per-sample values (..., B) or (..., B, 4), each pair taking those of its first member."""
    anchor = torch.minimum(torch.arange(partner.shape[-1], device=partner.device), partner)
    if t.ndim == partner.ndim:
        return t.gather(-1, anchor)
    return t.gather(-2, anchor[..., None].expand(*anchor.shape, t.shape[-1]))


def pair_with(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The partner rows of a batch: t[perm] for one batch, each member's own for K batches."""
    if perm.ndim == 1:
        return t[perm]
    members = torch.arange(perm.shape[0], device=perm.device)[:, None]
    return t[members, perm]


def _spread(v: torch.Tensor, x: torch.Tensor, trailing: int = 0) -> torch.Tensor:
    """`v` (lead..., *last `trailing` dims) viewed to broadcast against x (lead..., ...)."""
    lead = v.ndim - trailing
    return v.view(*v.shape[:lead], *([1] * (x.ndim - v.ndim)), *v.shape[lead:])


def blend(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Mixup of a batch (or a hidden state) with its partners: lam * x + (1 - lam) * x[perm]."""
    lam_x = lam if lam.ndim == 0 else _spread(lam, x)
    lam_x = lam_x.to(x.dtype)  # a half-precision hidden state stays in its precision
    return lam_x * x + (1 - lam_x) * pair_with(x, perm)


def mix(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
        perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch with its partners: (lam * x + (1 - lam) * x[perm], y[perm]).

    `lam` is a scalar for one batch or (M,) for M members, or one per sample; without `perm`
    nothing is mixed.
    """
    if perm is None:
        return x, y
    return blend(x, lam, perm), pair_with(y, perm)


def box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Boolean (..., H, W) masks of boxes (..., 4) = (yl, yh, xl, xh), by broadcasting."""
    rows = torch.arange(h, device=boxes.device)
    cols = torch.arange(w, device=boxes.device)
    yl, yh, xl, xh = (b[..., None] for b in boxes.unbind(-1))
    in_rows = (rows >= yl) & (rows < yh)
    in_cols = (cols >= xl) & (cols < xh)
    return in_rows[..., :, None] & in_cols[..., None, :]


def mix_images(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor,
               boxes: torch.Tensor | None, cut: torch.Tensor | None) -> torch.Tensor:
    """Images (..., C, H, W) mixed with their partners: Mixup's blend, CutMix's pasted boxes,
    or (with `cut`) each batch or sample one or the other, all over the whole batch at once.

    A CutMix sample blends with weight 1 (itself) before its box is pasted; a Mixup sample has
    an empty box: one formula covers both without a loop over samples.
    """
    if boxes is None:
        return blend(x, lam, perm)
    partner = pair_with(x, perm)
    mask = _spread(box_mask(boxes, x.shape[-2], x.shape[-1]), x, trailing=2)
    if cut is None:  # CutMix only
        return torch.where(mask, partner, x)
    lam_x = _spread(torch.where(cut, torch.ones_like(lam), lam), x).to(x.dtype)
    return torch.where(mask, partner, lam_x * x + (1 - lam_x) * partner)


# ------------------------------------------------------------------ loss and hits


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy against a soft target, averaged over the batch."""
    return (-target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixup_smoothing_loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
                         lam: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Cross entropy against smooth(lam * onehot(y) + (1 - lam) * onehot(y2)), without one-hots.

    logits (..., B, K), labels (..., B), lam of shape (...) (one per batch) or (..., B) (one
    per sample); mass is the uniform mass m (`uniform_mass`), any m < 1, one for all (a scalar)
    or one per leading index (...) (members trained together, each with its own): the batch
    mean for each leading index, so M members trained together get their M losses from one
    call. With m < 0 the loss can be negative (the target has negative entries).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    uniform = -logp.mean(-1)  # cross entropy against the uniform target 1 / K
    if 0 < mass.ndim < y.ndim:
        mass = mass[..., None]  # each member's over its batch

    def ce(labels: torch.Tensor) -> torch.Tensor:
        return (1 - mass) * -logp.gather(-1, labels[..., None]).squeeze(-1) + mass * uniform

    if lam.ndim < y.ndim:
        lam = lam[..., None]  # over the batch
    return (lam * ce(y) + (1 - lam) * ce(y2)).mean(-1)


def lambda_weighted_hits(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
                         lam: torch.Tensor) -> torch.Tensor:
    """Training hits against the mixed labels: lam * #(pred == y) + (1 - lam) * #(pred == y2),
    summed per sample when lam is one per sample."""
    pred = logits.detach().argmax(-1)
    if lam.ndim < y.ndim:
        return lam * (pred == y).sum(-1) + (1 - lam) * (pred == y2).sum(-1)
    return (lam * (pred == y)).sum(-1) + ((1 - lam) * (pred == y2)).sum(-1)
