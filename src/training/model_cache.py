"""Models for the runs of one process, so that a sweep compiles each architecture once.

`get_model` returns a model whose weights, buffers and mode are exactly those of a fresh
`build_model` under `torch.manual_seed(seed)`, on the run's device and memory layout. With
`reuse` (the default when the run compiles) the model object is kept in a small process cache
keyed by architecture, input shape, classes, device and layout; the next run of the same
architecture gets the same object back, re-initialised in place. torch.compile's graphs are
guarded on that object, so a sweep of Hydra's default (sequential) launcher compiles once per
architecture instead of once per run. `compiled` memoises the compiled callable per model, and
`stacked_calls` the compiled calls of stacked members per architecture (the batched launcher's
batches of one sweep share them).

How fast: re-initialising is one build on the CPU plus a copy of the weights (about 2 ms for
`cnn`, 0.1 s for `preact_resnet18` on a 2-core CPU), against the ~20 s that compiling
PreAct ResNet-18 with CUDA graphs took on an H100: a compiled sweep's second run started at full
speed (README, Performance).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.models import build_model
from src.training.device import Execution

# A handful of architectures: a model_families sweep alternates a few; more would hold GPU
# memory for models no run needs any more.
MAX_CACHED = 4
# Options of torch.compile. dynamic=False: the trainer keeps every batch shape fixed (it drops
# the last partial training batch and pads evaluation batches), so the graphs stay static and
# a new batch size is a new graph rather than a switch to slower dynamic-shape kernels.
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}

_CACHE: OrderedDict[tuple, nn.Module] = OrderedDict()
_STACKED: OrderedDict[tuple, Any] = OrderedDict()
T = TypeVar("T")
_COMPILED_ATTR = "_lsmix_compiled"


def cache_key(model_cfg: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int,
              execution: Execution) -> tuple:
    """What makes two runs' models interchangeable: architecture, shapes, device, layout."""
    plain = (OmegaConf.to_container(model_cfg, resolve=True)
             if isinstance(model_cfg, DictConfig) else dict(model_cfg))
    arch = json.dumps(plain, sort_keys=True, default=str)
    return (arch, tuple(int(v) for v in in_shape), int(num_classes), str(execution.device),
            execution.channels_last)


def fresh_model(model_cfg: Mapping[str, Any], in_shape: tuple[int, int, int],
                num_classes: int, execution: Execution, seed: int) -> nn.Module:
    """A new model exactly as a run builds it: seeded, built on the CPU, moved, laid out."""
    torch.manual_seed(seed)
    model = build_model(model_cfg, in_shape, num_classes).to(execution.device)
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def reinitialise_(model: nn.Module, model_cfg: Mapping[str, Any],
                  in_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Give `model` the weights, buffers and mode of a fresh build under `seed`, in place.

    Building a twin on the CPU runs every initialiser of the architecture in its own order
    (custom inits included) and leaves the global generator where a fresh build leaves it, so
    dropout draws later in the run match too. `copy_` keeps the cached tensors (and the memory
    format, hence the compiled graphs' guards) and only changes their values.
    """
    torch.manual_seed(seed)
    twin = build_model(model_cfg, in_shape, num_classes)
    source = dict(twin.named_parameters()) | dict(twin.named_buffers())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        tensor.copy_(source[name])
    for p in model.parameters():
        p.grad = None  # the previous run's gradients; a fresh model has none
    return model.train()


def get_model(model_cfg: Mapping[str, Any], in_shape: tuple[int, int, int], num_classes: int,
              execution: Execution, seed: int, reuse: bool = False) -> nn.Module:
    """The run's model: a fresh build, or (`reuse`) the cached one re-initialised for `seed`."""
    if not reuse:
        return fresh_model(model_cfg, in_shape, num_classes, execution, seed)
    key = cache_key(model_cfg, in_shape, num_classes, execution)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return reinitialise_(_CACHE[key], model_cfg, in_shape, num_classes, seed)
    model = fresh_model(model_cfg, in_shape, num_classes, execution, seed)
    _CACHE[key] = model
    while len(_CACHE) > MAX_CACHED:
        _CACHE.popitem(last=False)
    return model


def compile_mode(setting: Any, device: torch.device) -> str | None:
    """The torch.compile mode of `trainer.compile` (None: eager).

    `true` means the fastest mode measured for the device: on CUDA `reduce-overhead`, which
    replays the compiled step as CUDA graphs. Without them, the Python launch cost of the
    several hundred small kernels inductor emits for a ResNet step outweighs its fusion
    (H100, PreAct ResNet-18, batch 512, bf16: default mode 32k images/s, eager 47k,
    reduce-overhead 62k; README, Performance). On the CPU there are no graphs to replay.
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    return str(setting)


def compile_fn(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """`torch.compile(fn, mode=mode)` with the suite's options (a mode is inductor's: another
    backend, as the tests set one, takes none)."""
    options = dict(COMPILE_OPTIONS)
    if "backend" not in options:
        options["mode"] = mode
    return torch.compile(fn, **options)


def compiled(model: nn.Module, mode: str = "default") -> Callable[..., torch.Tensor]:
    """`torch.compile(model, mode=mode)`, made once per model object and mode, then reused."""
    fns = model.__dict__.get(_COMPILED_ATTR)
    if fns is None:
        fns = {}
        # Beside the model, not a submodule of it: object.__setattr__ skips Module's registry,
        # so parameters(), state_dict() and checkpoints do not see the wrapper.
        object.__setattr__(model, _COMPILED_ATTR, fns)
    if mode not in fns:
        fns[mode] = compile_fn(model, mode)
    return fns[mode]


def stacked_calls(key: tuple, build: Callable[[], T]) -> T:
    """The compiled calls of stacked members (src.training.trainer.StackedCalls) for `key`
    (architecture, shapes, device, mixing stages, compile mode): built once, then returned
    to every later batch of a sweep, so that Dynamo's graphs, guarded on the calls and their
    meta-device module, are compiled once per architecture, not once per batch."""
    if key in _STACKED:
        _STACKED.move_to_end(key)
        return _STACKED[key]
    _STACKED[key] = calls = build()
    while len(_STACKED) > MAX_CACHED:
        _STACKED.popitem(last=False)
    return calls


def clear() -> None:
    """Forget every cached model (tests; or to free GPU memory between studies)."""
    for model in _CACHE.values():
        model.__dict__.pop(_COMPILED_ATTR, None)
    _CACHE.clear()
    _STACKED.clear()
