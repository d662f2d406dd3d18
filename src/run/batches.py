"""Which runs may train together as one batched model, and how a sweep is cut into batches.

A batch is M member configs that differ only in src.config.BATCHABLE_KEYS (and in the folder
each one writes, `paths.run_dir`): the seed, Mixup's alpha, the smoothing eps and when it
starts, and the augmentation's name. `check_batch` refuses any other difference before anything
is written; `batch_key` is what the members of a batch share, so that a launcher groups a
sweep's jobs by it (hydra_plugins/lsmix_batched_launcher) and `plan_batches` cuts the groups
into batches of at most `max_members` runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import BATCHABLE_KEYS
from src.errors import ConfigError
from src.run.identity import flatten

# Each member writes its own folder; where it lies is not what it computes.
MEMBER_OWN_KEYS: tuple[str, ...] = (*BATCHABLE_KEYS, "paths.run_dir")


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """Every key of a composed config (resolved, Hydra's own node left out) as dotted keys."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return flatten({k: v for k, v in plain.items() if k != "hydra"})


def batch_key(cfg: DictConfig) -> str:
    """What the members of one batch share: the config without its members' own keys."""
    flat = flat_config(cfg)
    shared = {k: v for k, v in flat.items() if k not in MEMBER_OWN_KEYS}
    return json.dumps(shared, sort_keys=True, default=str)


def differing_keys(cfgs: Sequence[DictConfig]) -> list[str]:
    """The dotted keys whose values are not the same in every config, sorted."""
    flats = [flat_config(c) for c in cfgs]
    keys = set().union(*flats)
    missing = object()
    return sorted(k for k in keys if len({json.dumps(f.get(k, missing), sort_keys=True,
                                                     default=repr) for f in flats}) > 1)


def check_batch(cfgs: Sequence[DictConfig]) -> None:
    """Refuse members that may not train as one batched model: configs that differ in a key
    outside BATCHABLE_KEYS, the same folder twice, or runs that cannot be stacked
    (src.config.validate.cannot_stack)."""
    if len(cfgs) < 2:
        return
    from src.config.validate import cannot_stack

    others = [k for k in differing_keys(cfgs) if k not in MEMBER_OWN_KEYS]
    if others:
        key = others[0]
        values = [OmegaConf.select(c, key, default=None) for c in cfgs]
        raise ConfigError(key, values, "one value for every run trained together as one "
                          f"batched model (only {', '.join(BATCHABLE_KEYS)} may differ)",
                          hint=f"the runs also differ in {', '.join(others)}; train them in "
                          "separate batches (the batched launcher groups them so)")
    dirs = [str(c.paths.run_dir) for c in cfgs]
    if len(set(dirs)) < len(dirs):
        twice = sorted({d for d in dirs if dirs.count(d) > 1})
        raise ConfigError("paths.run_dir", twice[0], "one folder for each run trained together",
                          hint=f"{len(dirs)} runs, {len(set(dirs))} folders")
    why = cannot_stack(cfgs[0].model, str(cfgs[0].trainer.amp))
    if why is not None:
        raise ConfigError("model.name", str(cfgs[0].model.name), "runs that can train as one "
                          f"batched model ({why})", hint="train these runs one at a time")


def describe_batch(cfgs: Sequence[DictConfig], batch_id: str) -> str:
    """results.json `trained_with`: how many runs trained together, in what they differ, and
    the batch's id (the same in every member's results)."""
    varying = [k for k in differing_keys(cfgs) if k in BATCHABLE_KEYS]
    what = f" differing in {', '.join(varying)}" if varying else ""
    return f"{len(cfgs)} runs{what} (batch {batch_id})"


def check_max_members(max_members: Any) -> None:
    """The launcher's `max_members`: an integer >= 1."""
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
        raise ConfigError("hydra.launcher.max_members", max_members, "an integer >= 1 "
                          "(the most runs trained together as one batched model)")


STACK_CHOICES = ("auto", "always", "never")
# Under `stack=auto`, runs stack while one run's training step is shorter than this. Stacking
# shares what a step costs besides arithmetic (Python, dispatch, kernel launches, the
# optimiser's loop over tensors); a longer step is arithmetic the device already runs at full
# speed, and vmap's grouped convolutions run it slower. Measured on 2 CPU cores: cnn_small on
# the digits (1.6 ms a step) runs its 64-run quickstart in 64 s stacked against 78 s one at
# a time (launch to end, analysis included); on Fashion-MNIST (18 ms a step) 8 runs take 35 s
# stacked against 24 s. On an H100, 4 stacked PreAct ResNet-18 seeds (eager, about 14 ms a
# step) ran at 0.47x of separate runs (docs/performance.md); a GPU's launch-bound small models
# are what stacking is for.
STACK_MAX_STEP_S = 0.005


def stacking_pays(cfg: DictConfig, device_type: str) -> bool:
    """Whether runs of `cfg`'s setting train faster stacked than one at a time on a
    `device_type` device: while one step (eager, fp32, on random images, timed here) takes
    less than STACK_MAX_STEP_S. A GPU this process cannot see (a SLURM job's, planned on a
    login node) cannot be timed: its runs stack, as they did before `stack` existed."""
    import torch

    from src.training.step_time import step_seconds

    if device_type == "cuda" and not torch.cuda.is_available():
        return True
    step, _ = step_seconds(cfg, int(cfg.trainer.batch_size), device_type, forward=False)
    return step < STACK_MAX_STEP_S


def check_stack(stack: Any) -> None:
    """The launcher's `stack`: auto, always or never."""
    if stack not in STACK_CHOICES:
        raise ConfigError("hydra.launcher.stack", stack, " | ".join(STACK_CHOICES) + " (auto: "
                          "stack runs while one run's step is short, where stacking is "
                          "faster; always: every run that can be stacked; never: one run at "
                          "a time)")


def plan_batches(keys: Sequence[str | None], sizes: Sequence[int], max_members: int,
                 batchable: Sequence[bool]) -> list[list[int]]:
    """Job indices cut into batches: jobs of one key together (in their order), each batch at
    most `max_members` runs (a job of `sizes[i]` runs is never split; one larger than
    `max_members` is a batch of its own). A job without a key, or not `batchable` (a model
    without a vmap rule), is a batch of its own. Batches are in the order of their first job."""
    check_max_members(max_members)
    groups: dict[str, list[int]] = {}
    order: list[list[int] | str] = []
    for i, key in enumerate(keys):
        if key is None or not batchable[i]:
            order.append([i])
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    plan: list[list[int]] = []
    for item in order:
        if isinstance(item, list):
            plan.append(item)
            continue
        batch: list[int] = []
        members = 0
        for i in groups[item]:
            if batch and members + sizes[i] > max_members:
                plan.append(batch)
                batch, members = [], 0
            batch.append(i)
            members += sizes[i]
        plan.append(batch)
    return plan
