"""Manifold Mixup hooks: mix the hidden state of a named stage instead of the input.

Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States"
(ICML): each step picks a layer k (k = 0 is the input), runs the network up to k, mixes the
hidden states of the batch with a permutation of it, h = lam * h + (1 - lam) * h[perm], and
runs the rest. Every model lists its stages in the class attribute `MIX_LAYERS` ("input"
first) and takes `forward(x, mix_at=None, mixer=None)`; it calls `mix_after(stage, h, ...)`
after each named stage. The mixer is any function of the hidden state, so the trainer keeps
lambda and the permutation, and a vmapped caller can close over its own per-copy values.

`mix_at` is a Python string, fixed for a call: the branch is decided while tracing, so the
forward stays one static graph under torch.func.vmap, functional_call and torch.compile.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Mixer = Callable[[Tensor], Tensor]
INPUT = "input"  # the stage name that means the images themselves


def check_mix(layers: tuple[str, ...], mix_at: str | None, mixer: Mixer | None) -> None:
    """Refuse a stage the model does not have, or a stage without a mixer."""
    if mix_at is None:
        return
    if mix_at not in layers:
        raise ValueError(f"mix_at={mix_at!r} is not a stage of this model: one of {list(layers)}")
    if mixer is None:
        raise ValueError(f"mix_at={mix_at!r} needs a mixer (a function of the hidden state)")


def mix_after(stage: str, h: Tensor, mix_at: str | None, mixer: Mixer | None) -> Tensor:
    """`mixer(h)` when `stage` is the one named by `mix_at`, else `h` itself (untouched)."""
    if stage == mix_at and mixer is not None:
        return mixer(h)
    return h
