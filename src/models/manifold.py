"""Manifold Mixup hooks: mix the hidden state of a named stage instead of the input.

Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States"
(ICML): each step picks a layer k (k = 0 is the input), runs the network up to k, mixes the
hidden states of the batch with a permutation of it, h = lam * h + (1 - lam) * h[perm], and
runs the rest. Every model lists its stages in the class attribute `MIX_LAYERS` ("input"
first) and takes `forward(x, mix_at=None, mixer=None)`; it calls `mix_after(stage, h, ...)`
after each named stage. The mixer is any function of the hidden state, so the trainer keeps
lambda and the permutation, and a vmapped caller can close over its own per-copy values.

Verma et al. draw k per batch among an eligible set, for PreAct ResNet and WRN the input and
the outputs of the first two stages (k in {0, 1, 2}; github.com/vikasverma1077/manifold_mixup,
`mixup_hidden`). Every model declares its own eligible set in `MANIFOLD_LAYERS`: what
`augmentation.mix_layer: default` mixes at (`choose_layers`).

`mix_at` is a Python string, fixed for a call: the branch is decided while tracing, so the
forward stays one static graph under torch.func.vmap, functional_call and torch.compile. It
may also be a tuple of stages with one mixer for each (a mapping): members trained as one
vmapped model each mix at their own drawn stage, every other stage's mixer an identity for
them (src.training.trainer.StackedTrainer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

Mixer = Callable[[Tensor], Tensor]
Stages = str | tuple[str, ...]  # one stage, or several with a mixer each
Mixers = Mixer | Mapping[str, Mixer]
INPUT = "input"  # the stage name that means the images themselves
DEFAULT = "default"  # augmentation.mix_layer: the model's eligible set, MANIFOLD_LAYERS


def choose_layers(mix_layer: str | Sequence[str], stages: tuple[str, ...],
                  eligible: tuple[str, ...]) -> tuple[str, ...]:
    """The stages a run mixes at, one drawn per batch when there are several: `mix_layer` as
    one stage, a list of distinct stages, or DEFAULT (the model's `eligible` set). ValueError
    for a stage the model lacks, an empty list or a stage named twice."""
    if isinstance(mix_layer, str):
        names = eligible if mix_layer == DEFAULT else (mix_layer,)
    else:
        names = tuple(mix_layer)
    if not names:
        raise ValueError("an empty list names no stage")
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a stage of this model")
    if len(set(names)) != len(names):
        raise ValueError("a stage is named twice")
    return names


def check_mix(layers: tuple[str, ...], mix_at: Stages | None, mixer: Mixers | None) -> None:
    """Refuse a stage the model does not have, or a stage without a mixer."""
    if mix_at is None:
        return
    for stage in (mix_at,) if isinstance(mix_at, str) else mix_at:
        if stage not in layers:
            raise ValueError(f"mix_at={stage!r} is not a stage of this model: one of "
                             f"{list(layers)}")
    if mixer is None:
        raise ValueError(f"mix_at={mix_at!r} needs a mixer (a function of the hidden state)")
    if not isinstance(mix_at, str) and not (isinstance(mixer, Mapping)
                                            and set(mixer) == set(mix_at)):
        raise ValueError(f"mix_at={mix_at!r} needs one mixer for each of its stages")


def mix_after(stage: str, h: Tensor, mix_at: Stages | None, mixer: Mixers | None) -> Tensor:
    """`mixer(h)` when `stage` is the one named by `mix_at` (its own mixer when `mix_at` names
    several), else `h` itself (untouched)."""
    if mix_at is None or mixer is None:
        return h
    if isinstance(mix_at, str):
        return mixer(h) if stage == mix_at else h
    return mixer[stage](h) if stage in mix_at else h
