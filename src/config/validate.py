"""Checks of the whole composed config before anything is trained or written.

Every key has a type and an allowed range; unknown keys are rejected. Errors name the key,
the value and what is allowed (src.errors.ConfigError).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from src.config.options import AMP_CHOICES, COMPILE_MODES, WANDB_MODES
from src.data.arrays import DATASETS
from src.errors import ConfigError, did_you_mean
from src.noise import check_noise_config


@dataclass(frozen=True)
class Rule:
    """One key's type and range, with the text that says what is allowed."""

    check: Callable[[Any], bool]
    allowed: str

    def __call__(self, key: str, value: Any) -> None:
        ok = False
        try:
            ok = bool(self.check(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(key, value, self.allowed)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: float = float("inf")) -> Rule:
    hi_text = "" if hi == float("inf") else f" and <= {hi}"
    return Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer >= {lo}{hi_text}")


def number(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite number in the interval (infinity and NaN are never a setting)."""
    def check(v: Any) -> bool:
        return (_is_num(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
                and (v < hi if hi_open else v <= hi))
    if hi == float("inf"):
        text = f"a finite number {'>' if lo_open else '>='} {lo}"
    else:
        text = f"a finite number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Rule(check, text)


def choice(*options: Any) -> Rule:
    # Type-exact, so that true is not taken for 1 nor 1 for true.
    return Rule(lambda v: any(type(v) is type(o) and v == o for o in options),
                f"one of {list(options)}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
STR = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
OPT_STR = Rule(lambda v: v is None or (isinstance(v, str) and v != ""), "null or a path")
SEED = integer(0, 2**32 - 1)
POSITIVE = number(0, float("inf"), lo_open=True)
NON_NEG = number(0, float("inf"))


def list_of(rule: Rule, min_len: int = 0, exact: int | None = None) -> Rule:
    def check(v: Any) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) < min_len:
            return False
        if exact is not None and len(v) != exact:
            return False
        return all(rule.check(x) for x in v)
    n = f"{exact} " if exact is not None else ""
    return Rule(check, f"a list of {n}values, each {rule.allowed}")


DATASET = {
    "name": choice(*DATASETS),
    "num_classes": integer(2, 100_000),
    "image_shape": list_of(integer(1, 100_000), exact=3),
    "mean": list_of(number(0, 1), min_len=1),
    # Pixels are scaled to [0, 1] before normalising: a std outside this range cannot be a
    # dataset's, and a tiny one (1e-45) overflows the normalised images to infinity.
    "std": list_of(number(0.001, 10), min_len=1),
    "root": OPT_STR, "npz": OPT_STR, "download": BOOL,
    # File names looked for in root (src.data.arrays.archive_candidates): names, not paths.
    "archives": list_of(Rule(lambda v: isinstance(v, str) and v != "" and "/" not in v
                             and v not in (".", ".."), "a file name")),
    "augment": {"crop_padding": integer(0, 64), "hflip": BOOL},
    "val_fraction": number(0, 1, hi_open=True),
    "val_seed": SEED,
    "train_subset": Rule(lambda v: v is None or (_is_int(v) and v >= 1)
                         or (_is_num(v) and not _is_int(v) and 0 < v < 1),
                         "null (every image), a count >= 1, or a fraction in (0, 1)"),
    "train_subset_seed": Rule(lambda v: v is None or SEED.check(v),
                              "null (the noise seed draws the subset) or an integer seed >= 0"),
}
def _finite(v: Any) -> bool:
    """A number that is neither infinite nor NaN (the one value unequal to itself)."""
    return _is_num(v) and v == v and abs(v) != float("inf")


def _box_fractions(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and len(v) == 2
                         and all(_finite(f) for f in v) and 0 < v[0] < v[1] <= 1)


# The augmentation schema: Mixup, CutMix and their settings as timm's Mixup has them
# (src.augmentation), and label smoothing with any eps < 1 (Wei et al. 2022: negative eps included).
AUGMENTATION = {
    "name": choice("none", "mixup", "smoothing", "mixup_smoothing", "cutmix", "mixup_cutmix",
                   "manifold_mixup"),
    "mixup_alpha": Rule(lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0 = off)"),
    "smoothing": Rule(lambda v: _finite(v) and v < 1,
                      "a finite number < 1 (0 = off; negative: negative label smoothing)"),
    "smoothing_to": choice("all", "others"),
    "smoothing_start_epoch": integer(0),
    "cutmix_alpha": Rule(lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0 = off)"),
    "cutmix_minmax": Rule(_box_fractions, "null or an ordered pair [min, max] of box side "
                          "fractions, 0 < min < max <= 1"),
    "correct_lam": BOOL,
    "mix_prob": Rule(lambda v: _finite(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "switch_prob": Rule(lambda v: _finite(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "mix_mode": choice("batch", "pair", "elem"),
    "pairing": choice("permutation", "flip"),
    # One stage, several (one drawn per batch) or default; the model's names are checked in
    # check_augmentation (src.models.mix_layer_choice).
    "mix_layer": Rule(lambda v: (isinstance(v, str) and v != "") or isinstance(v, list),
                      "'default', a model stage, or a list of model stages"),
}
TRAINER = {
    "epochs": integer(1, 100_000), "batch_size": integer(2, 10_000_000),
    "optimizer": choice("sgd", "adamw"), "lr": number(0, 100, lo_open=True),
    "momentum": number(0, 1, hi_open=True), "nesterov": BOOL, "weight_decay": number(0, 1),
    "decay_all": BOOL,
    "grad_clip": Rule(lambda v: v is None or (_finite(v) and v > 0),
                      "null (off) or a finite number > 0: the largest global gradient norm"),
    "schedule": choice("cosine", "multistep", "constant", "linear"),
    "decay_start": integer(0), "beta1_after_decay": Rule(
        lambda v: v is None or (_finite(v) and 0 <= v < 1), "null or a number in [0, 1)"),
    "steps_per_epoch": Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                            "null (the whole training split) or an integer >= 1"),
    "normalize": BOOL, "last_k": integer(1),
    "memorization_subset": Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                                "null (every training image) or an integer >= 1: how many "
                                "training images estimate memorisation"),
    # The run folder to start from (src.run.init_from checks it on disk), and which weights.
    "init_from": OPT_STR, "init_weights": choice("best", "last"),
    "milestones": list_of(POSITIVE), "gamma": number(0, 1, lo_open=True),
    "warmup_epochs": NON_NEG, "eval_every": integer(1), "eval_batch_size": integer(1),
    "device": STR, "amp": choice(*AMP_CHOICES),
    "compile": choice(True, False, *COMPILE_MODES),
    "channels_last": choice("auto", True, False), "seed": SEED,
    "progress": choice("auto", True, False),
    "checkpoint_every": integer(0), "checkpoint_interval_s": number(0, float("inf")),
    "keep_checkpoint": BOOL,
    "parallel_seeds": list_of(SEED),
    "save_weights": BOOL, "save_best": choice("val", "none"), "overfit_batches": integer(0),
    "overfit_pass_acc": number(0, 1, lo_open=True),
    "profile": BOOL,
    "threads": Rule(lambda v: v == "auto" or (_is_int(v) and 1 <= v <= 4096),
                    "auto or an integer from 1 to 4096"),
}
_WANDB_FORBIDDEN = "/\\#?%:"
# The root config's groups (checked section by section).
GROUPS = ("dataset", "model", "augmentation", "noise", "trainer", "logger", "paths")
LOGGER = {
    "none": {"name": choice("none", "wandb")},
    "wandb": {"name": choice("none", "wandb"),
              # W&B refuses these characters in a project name (after data preparation).
              "project": Rule(lambda v: isinstance(v, str) and 0 < len(v) <= 128
                              and not set(v) & set(_WANDB_FORBIDDEN),
                              f"a W&B project name: 1-128 characters, none of "
                              f"{' '.join(_WANDB_FORBIDDEN)}"), "entity": OPT_STR,
              "group": Rule(lambda v: isinstance(v, str), "a string"),
              "tags": list_of(Rule(lambda v: isinstance(v, str), "a string")),
              "mode": choice(*WANDB_MODES), "dir": OPT_STR,
              "init_timeout": POSITIVE},
}
# task_name names the study's folder under paths.output_dir: one plain name, never a path.
NAME = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v)
            is not None and ".." not in v,
            "a plain name of letters, digits, '_', '.' and '-' (no '/' or '..': it names a "
            "folder under paths.output_dir)")
ROOT = {"task_name": NAME, "tags": list_of(Rule(lambda v: isinstance(v, str), "a string")),
        "skip_completed": BOOL,
        "plan": Rule(lambda v: isinstance(v, bool) or v == "before", "true, false or before")}


def check_section(prefix: str, values: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Check every key of `values` against `spec`; unknown keys and missing keys fail."""
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in spec:
            raise ConfigError(full, value, f"a known key of {prefix or 'the root config'}: "
                              f"{sorted(spec)}", hint=did_you_mean(key, spec))
        rule = spec[key]
        if isinstance(rule, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(full, value, f"a mapping with keys {sorted(rule)}")
            check_section(full, value, rule)
        else:
            rule(full, value)
    missing = set(spec) - set(values)
    if missing:
        key = f"{prefix}.{sorted(missing)[0]}" if prefix else sorted(missing)[0]
        raise ConfigError(key, None, "a value: this key is required")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value of a composed config."""
    plain = _plain(cfg)
    # Every root key but the config groups, which have their own sections below: an unknown
    # one (`+lr=0.01` meant as trainer.lr) is refused, not ignored.
    root = {k: v for k, v in plain.items() if k not in GROUPS}
    for key, value in root.items():
        if key not in ROOT:
            owners = [f"{g}.{key}" for g in GROUPS if isinstance(plain.get(g), Mapping)
                      and key in plain[g]]
            raise ConfigError(key, value, f"a known key of the root config: {sorted(ROOT)}",
                              hint=f"did you mean {' or '.join(owners)}?" if owners else
                              "a new root key needs a place in the code that reads it")
    check_section("", root, ROOT)
    check_section("dataset", plain["dataset"], DATASET)
    ds = plain["dataset"]
    c = ds["image_shape"][0]
    for key in ("mean", "std"):
        if len(ds[key]) != c:
            raise ConfigError(f"dataset.{key}", ds[key], f"one value per channel ({c})")
    if ds["name"] == "npz" and not ds["npz"]:
        raise ConfigError("dataset.npz", ds["npz"], "a path to an .npz archive")
    check_section("augmentation", plain["augmentation"], AUGMENTATION)
    check_noise_config(plain["noise"], ds["num_classes"], ds["name"])
    check_section("trainer", plain["trainer"], TRAINER)
    lg = plain["logger"]
    LOGGER["none"]["name"]("logger.name", lg.get("name"))
    check_section("logger", lg, LOGGER[lg["name"]])
    check_model(plain["model"], tuple(ds["image_shape"]), ds["num_classes"])
    check_augmentation(plain["augmentation"], plain["model"]["name"], ds, plain["trainer"])
    check_schedule(plain["trainer"])
    check_init_weights(plain["trainer"])
    check_parallel_seeds(plain["trainer"]["parallel_seeds"], plain["model"],
                         str(plain["trainer"]["amp"]))


def check_augmentation(aug: Mapping[str, Any], model: str, ds: Mapping[str, Any],
                       trainer: Mapping[str, Any]) -> None:
    """What the augmentation keys must satisfy together and with the data, model and epochs."""
    k, eps = ds["num_classes"], aug["smoothing"]
    if aug["smoothing_to"] == "others" and eps >= (k - 1) / k:
        raise ConfigError("augmentation.smoothing", eps,
                          f"a number < (K - 1) / K = {(k - 1) / k:.6g} with smoothing_to=others "
                          f"and K = {k} classes", hint="at that eps another class's target "
                          "would equal or pass the true class's")
    if eps != 0 and aug["smoothing_start_epoch"] >= trainer["epochs"]:
        raise ConfigError("augmentation.smoothing_start_epoch", aug["smoothing_start_epoch"],
                          f"an integer < trainer.epochs = {trainer['epochs']}",
                          hint="from that epoch on the run would never smooth")
    h, w = ds["image_shape"][1:]
    lo_hi = aug["cutmix_minmax"]
    if lo_hi is not None and not (int(h * lo_hi[0]) < int(h * lo_hi[1])
                                  and int(w * lo_hi[0]) < int(w * lo_hi[1])):
        raise ConfigError("augmentation.cutmix_minmax", lo_hi,
                          f"a range of box sides that spans at least one pixel of the {h}x{w} "
                          "images (int(side * min) < int(side * max))")
    from src.models import mix_layer_choice
    from src.models.manifold import INPUT

    if mix_layer_choice(model, aug["mix_layer"]) != (INPUT,) and (
            aug["cutmix_alpha"] > 0 or lo_hi is not None):
        raise ConfigError("augmentation.mix_layer", aug["mix_layer"],
                          f"{INPUT!r} with CutMix (cutmix_alpha > 0 or a cutmix_minmax)",
                          hint="CutMix pastes image boxes: it mixes the input only")


def check_schedule(trainer: Mapping[str, Any]) -> None:
    """The schedule's keys fit together: beta1 only for Adam. (A decay start after the last
    epoch is allowed: a short smoke run of a protocol keeps its lr constant.)"""
    if trainer["beta1_after_decay"] is not None and trainer["optimizer"] != "adamw":
        raise ConfigError("trainer.beta1_after_decay", trainer["beta1_after_decay"],
                          "null with trainer.optimizer=sgd", hint="beta1 is Adam's momentum")


def check_init_weights(trainer: Mapping[str, Any]) -> None:
    """trainer.init_weights names a file of the run trainer.init_from names: without one it
    stays at its default, which leaves the fingerprint of a run from scratch as it was."""
    if trainer["init_from"] is None and trainer["init_weights"] != "best":
        raise ConfigError("trainer.init_weights", trainer["init_weights"],
                          "best (the default) while trainer.init_from is null",
                          hint="it picks the weights file of the run that trainer.init_from "
                               "names; a run from scratch has none")


def check_parallel_seeds(seeds: list[int], model: Mapping[str, Any], amp: str) -> None:
    """Seeds trained together must be distinct, and their runs must be stackable."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError("trainer.parallel_seeds", seeds, "a list of distinct seeds")
    why = cannot_stack(model, amp) if seeds else None
    if why is not None:
        raise ConfigError("trainer.parallel_seeds", seeds, f"[] for these runs ({why})",
                          hint="run the seeds as separate jobs")


def cannot_stack(model: Mapping[str, Any], amp: str) -> str | None:
    """Why runs of this model and precision may not train as one batched model, or None.

    The one rule for `trainer.parallel_seeds`, the batched launcher and src.run.batches. Each
    member's failure and draws must stay its own, as in its separate run:
    - a model without a vmap rule (nn.LSTM/GRU) cannot be stacked at all;
    - fp16 loss scaling has one GradScaler for the stacked parameters: a member whose
      gradients overflow (one diverging, say) makes it skip every member's step and shrink
      the one scale until the others freeze, where separate runs each keep their own scale;
    - dropout inside vmap draws one stream for all members, so a member's masks would
      depend on which runs it was batched with.
    """
    from src.models import vmappable

    name = str(model["name"])
    if not vmappable(name):
        return f"{name} has no vmap rule"
    if amp == "fp16":
        return "trainer.amp=fp16 has one loss scale for all members; use bf16 or off"
    if any(k.endswith("dropout") and isinstance(v, (int, float)) and v > 0
           for k, v in model.items()):
        return "dropout draws one random stream for all members"
    return None


# Architectures already checked in this process: a sweep checks each once, not once per run
# (the meta-device forward costs tens of milliseconds, as much as a short digits run trains).
_CHECKED_MODELS: set[str] = set()


def check_model(model_cfg: Mapping[str, Any], in_shape: tuple[int, ...], k: int) -> None:
    """Build the model on the meta device and run a forward pass: no memory, no compute."""
    key = json.dumps([dict(model_cfg), list(in_shape), k], sort_keys=True, default=str)
    if key in _CHECKED_MODELS:
        return
    _check_model(model_cfg, in_shape, k)
    _CHECKED_MODELS.add(key)


def _check_model(model_cfg: Mapping[str, Any], in_shape: tuple[int, ...], k: int) -> None:
    import torch

    from src.models import build_model

    with torch.device("meta"):
        model = build_model(model_cfg, in_shape, k)  # raises ConfigError for bad keys
        try:
            out = model(torch.empty(2, *in_shape))
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigError("model.name", model_cfg.get("name"),
                              f"a model that accepts images of shape {list(in_shape)} "
                              f"(C, H, W) of this dataset", hint=str(err).splitlines()[0]) from None
    if tuple(out.shape) != (2, k):
        raise ConfigError("model.name", model_cfg.get("name"),
                          f"a model with {k} outputs for this dataset, not {list(out.shape)[1:]}")


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python values, interpolations resolved (Hydra's own keys left out)."""
    out: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        try:
            node = cfg[key]
            out[key] = (OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
                        if OmegaConf.is_config(node) else node)
        except MissingMandatoryValue as err:
            raise ConfigError(str(err.full_key or key), "???", "a value: this key must be set",
                              ) from None
        except OmegaConfBaseException as err:  # an interpolation that cannot be resolved
            raise ConfigError(str(err.full_key or key), "${...}", "a resolvable value",
                              hint=str(err).splitlines()[0]) from None
    return out

