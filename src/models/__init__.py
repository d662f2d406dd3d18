"""Model registry: `build_model(cfg, in_shape, num_classes)` builds the model a config names.

Each model is a class whose keyword arguments are exactly its config keys, with the
defaults of conf/model/<name>.yaml. Building goes through this registry, never through Hydra
`_target_`, so configs name models but cannot execute code. Every class lists its Manifold
Mixup stages in `MIX_LAYERS` (src.models.manifold), and in `MANIFOLD_LAYERS` those that
`augmentation.mix_layer: default` draws among; `mix_layers(name)`, `manifold_layers(name)` and
`mix_layer_choice(name, mix_layer)` read them without building a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

from torch import nn

from src.errors import ConfigError
from src.models.cnn import SmallCNN
from src.models.manifold import DEFAULT, choose_layers
from src.models.mlp import MLP
from src.models.preact_resnet import PreActResNet18
from src.models.recurrent import RowGRU, RowLSTM
from src.models.vit import ViT
from src.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
    "lstm": RowLSTM,
    "gru": RowGRU,
    "vit": ViT,
}

__all__ = ["MODELS", "build_model", "manifold_layers", "mix_layer_choice", "mix_layers",
           "model_keys", "vmappable"]


def _is_positive_int(value: Any) -> bool:
    """Whether `value` is an integer >= 1 (bools excluded: YAML `true` is not a size)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _positive_int(key: str, value: Any) -> int:
    """An int >= 1."""
    if not _is_positive_int(value):
        raise ConfigError(f"model.{key}", value, "a positive integer")
    return int(value)


def _positive_ints(key: str, value: Any) -> tuple[int, ...]:
    """A non-empty list of ints >= 1 (an OmegaConf ListConfig counts as a list)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"model.{key}", value, "a non-empty list of positive integers")
    if not all(_is_positive_int(v) for v in value):
        raise ConfigError(f"model.{key}", list(value), "a non-empty list of positive integers")
    return tuple(int(v) for v in value)


def _dropout(key: str, value: Any) -> float:
    """A probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"model.{key}", value, "a dropout probability in [0, 1)")
    return float(value)


def _flag(key: str, value: Any) -> bool:
    """A YAML boolean."""
    if not isinstance(value, bool):
        raise ConfigError(f"model.{key}", value, "true or false")
    return value


# Keys mean the same in every model, so one checker per key name covers them all.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "hidden_sizes": _positive_ints,
    "channels": _positive_ints,
    "width": _positive_int,
    "depth": _positive_int,
    "widen_factor": _positive_int,
    "hidden_size": _positive_int,
    "num_layers": _positive_int,
    "bidirectional": _flag,
    "dropout": _dropout,
    "patch_size": _positive_int,
    "heads": _positive_int,
    "mlp_ratio": _positive_int,
}


def _model_class(name: Any) -> type[nn.Module]:
    """The class registered as `name`; ConfigError naming model.name otherwise."""
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError("model.name", name, f"one of {sorted(MODELS)}")
    return MODELS[name]


def mix_layers(name: str) -> tuple[str, ...]:
    """The Manifold Mixup stages of model `name` ("input" first), for `forward(mix_at=...)`."""
    return tuple(_model_class(name).MIX_LAYERS)


def manifold_layers(name: str) -> tuple[str, ...]:
    """The stages model `name` draws among per batch under `mix_layer: default`."""
    return tuple(_model_class(name).MANIFOLD_LAYERS)


def mix_layer_choice(name: str, mix_layer: Any) -> tuple[str, ...]:
    """The stages `augmentation.mix_layer` names for model `name` (several: one drawn per
    batch); ConfigError naming the key, the value and the model's stages otherwise."""
    stages, eligible = mix_layers(name), manifold_layers(name)
    names = [mix_layer] if isinstance(mix_layer, str) else mix_layer
    try:
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError("stage names are strings")
        return choose_layers(mix_layer, stages, eligible)
    except ValueError as err:
        raise ConfigError(
            "augmentation.mix_layer", mix_layer,
            f"{DEFAULT!r} (model {name}'s eligible stages {list(eligible)}), one stage of "
            f"model {name} or a list of distinct ones, one drawn per batch: each one of "
            f"{list(stages)}", hint=str(err)) from None


def vmappable(name: str) -> bool:
    """Whether torch.func.vmap can run model `name` (several seeds as one batched model)."""
    return bool(getattr(_model_class(name), "VMAPPABLE", True))


def model_keys(name: str) -> dict[str, Any]:
    """The config keys of model `name` and their defaults."""
    params = list(inspect.signature(_model_class(name)).parameters.values())[2:]
    return {p.name: p.default for p in params}


def build_model(
    cfg: Mapping[str, Any], in_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """Build the model `cfg.name` for images of shape (C, H, W) and `num_classes` outputs."""
    name = cfg.get("name")
    allowed = model_keys(name)
    kwargs = {}
    for key in cfg:
        if key == "name":
            continue
        if key not in allowed:
            raise ConfigError(
                f"model.{key}", cfg[key], f"a key of model {name!r}: one of {sorted(allowed)}"
            )
        kwargs[key] = _CHECKS[key](key, cfg[key])
    if not _is_positive_int(num_classes):
        raise ConfigError("num_classes", num_classes, "a positive integer")
    if len(in_shape) != 3 or not all(_is_positive_int(v) for v in in_shape):
        raise ConfigError("dataset.image_shape", in_shape, "three positive integers (C, H, W)")
    shape = (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
    return _model_class(name)(shape, int(num_classes), **kwargs)
