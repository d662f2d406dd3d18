"""`plan=true`: what a sweep or a study would run, before it runs. Nothing is trained or written.
A study prints the same plan before it trains (`plan: before` in conf/study/default.yaml).

    python -m src.train +experiment=answer plan=true
    python -m src.train -m model=mlp,cnn augmentation.smoothing=0,0.1 plan=true

It prints the grid (each swept key and its values), the number of runs, how many of them are
already finished in their folders (a results.json that says completed or diverged, of the
job's own configuration: the sweep skips those; a run of another configuration is counted
apart, as the sweep refuses its folder; with skip_completed=false every run is to run),
and an estimate of the time the rest would take.

The estimate is measured, not guessed: for each distinct setting of everything but the
replicate and batchable keys (src.config), one job is composed, its model takes a few training
steps at its batch size and a few evaluation forwards on random images of its dataset's shape
on this machine, and a run is `epochs x training steps x step time + evaluations x evaluated
images (training split, validation, test) x time per image`, plus a fixed start-up cost.
Runs are counted one at a time: the batched launcher (stacked members) and parallel
launchers finish sooner, and so do compiled or bf16 runs (the steps are timed eager, in
fp32). Wall time on a busy machine is longer: the step times are the fastest of several,
what the machine does undisturbed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from src.config import SEED_FOLDER_KEY
from src.sweep.compose import JobComposer, setting_key
from src.training.step_time import step_seconds

# One run's start-up in a sweep process (compose, records, model, first evaluation), measured
# on a 2-core CPU for the small models; large models' start-up is inside their step time.
STARTUP_S = 1.5


@dataclass(frozen=True)
class Estimate:
    """The measured cost of one run of a setting."""

    step_s: float
    eval_image_s: float
    steps_per_epoch: int
    eval_images: int
    epochs: int
    evaluations: int

    @property
    def run_s(self) -> float:
        return (STARTUP_S + self.epochs * self.steps_per_epoch * self.step_s
                + self.evaluations * self.eval_images * self.eval_image_s)


def axes(overrides: Sequence[Override]) -> list[tuple[str, list[str]]]:
    """The swept keys of a sweep and their values, in the order given. A key given again (on
    the command line, after a study's hydra.sweeper.params) takes its last value, as Hydra's
    sweeper takes it: `+experiment=answer noise.rate=0.4` sweeps no noise rate."""
    last = {o.get_key_element(): o for o in overrides}
    return [(key, [str(v) for v in o.sweep_string_iterator()])
            for key, o in last.items() if o.is_sweep_override()]


def job_folder(cfg: DictConfig, parsed: list[Override], seed: Any) -> Path:
    """A job's run folder, as conf/hydra/default.yaml names it (`hydra.sweep.subdir`)."""
    names = cfg.hydra.job.config.override_dirname
    dirname = get_overrides_dirname(parsed, exclude_keys=list(names.exclude_keys),
                                    item_sep=names.item_sep, kv_sep=names.kv_sep)
    return Path(str(cfg.hydra.sweep.dir)) / dirname / f"seed={seed}"


def recorded(folder: Path) -> dict[str, Any] | None:
    """The results.json of a run in the folder, whatever its status; None if there is none."""
    try:
        done = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def split_sizes(ds: DictConfig) -> tuple[int, int]:
    """The sizes of the training and test splits: from an archive's labels alone (decoding
    CIFAR-10's JPEG copy takes minutes), else from the loaded dataset."""
    import numpy as np

    from src.data.arrays import load_arrays, local_archive

    npz = ds.get("npz") or local_archive(ds)
    if npz:
        try:
            with np.load(str(npz)) as z:
                return len(z["y_train"]), len(z["y_test"])
        except (OSError, KeyError, ValueError):
            pass  # load_arrays says what is wrong with it
    arrays = load_arrays(ds)
    return len(arrays.y_train), len(arrays.y_test)


def estimate(cfg: DictConfig) -> Estimate:
    """One run of this config, measured on this machine (see the module's docstring)."""
    from src.data.subset import subset_size

    n, n_test = split_sizes(cfg.dataset)
    n = subset_size(cfg.dataset, n) or n
    n_val = int(round(float(cfg.dataset.val_fraction) * n))
    n_train, batch = n - n_val, int(cfg.trainer.batch_size)
    steps = math.ceil(n_train / batch)
    if cfg.trainer.get("overfit_batches"):
        steps = min(steps, int(cfg.trainer.overfit_batches))
    if cfg.trainer.get("steps_per_epoch") is not None:
        steps = min(steps, int(cfg.trainer.steps_per_epoch))
    epochs, every = int(cfg.trainer.epochs), int(cfg.trainer.eval_every)
    memorised = cfg.trainer.get("memorization_subset")  # a fixed part of the training split
    n_memo = n_train if memorised is None else min(n_train, int(memorised))
    # Every evaluation predicts the training split (memorisation), validation and test.
    step_s, eval_image_s = step_seconds(cfg, batch)
    return Estimate(step_s=step_s, eval_image_s=eval_image_s, steps_per_epoch=steps,
                    eval_images=n_memo + n_val + n_test, epochs=epochs,
                    evaluations=math.ceil(epochs / every))


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def describe(loader: Any, master: DictConfig, params: Sequence[Override],
             jobs: Sequence[Sequence[str]], then_train: bool = False) -> str:
    """The plan of a sweep: its grid, its runs, the finished ones and the time left."""
    from src.run.preflight import FINAL  # what a sweep skips (completed_results)

    parser = OverridesParser.create()
    compose = JobComposer(loader, master)  # one Hydra composition per setting
    composed: dict[tuple[str, ...], DictConfig] = {}
    costs: dict[tuple[str, ...], Estimate] = {}
    left: Counter[tuple[str, ...]] = Counter()
    done = other = 0
    skip = bool(master.get("skip_completed", True))
    for overrides in jobs:
        key = setting_key(overrides)
        if key not in composed:
            composed[key] = compose(overrides)
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        seed = values.get(SEED_FOLDER_KEY, composed[key].trainer.seed)
        folder = job_folder(master, parser.parse_overrides(list(overrides)), seed)
        results = recorded(folder) if skip else None  # skip_completed=false: all trained
        # As src.run.preflight.completed_results: a run of this job's config that ended is
        # skipped, one that did not is resumed; a run of another config is refused.
        mine = None if results is None else _fingerprint(compose(overrides))
        if results is None or mine is None:  # nothing there, or a job that will say why
            left[key] += 1
        elif results.get("config_fingerprint") != mine:
            other += 1
        elif results.get("status") in FINAL:
            done += 1
        else:
            left[key] += 1
    for key in left:
        costs[key] = estimate(composed[key])
    total = sum(costs[k].run_s * n for k, n in left.items())
    lines = [f"Plan of {master.get('task_name', 'the sweep')}: {len(jobs)} runs into "
             f"{master.hydra.sweep.dir}", "grid:"]
    lines += [f"  {key}: {', '.join(values)} ({len(values)})" for key, values in axes(params)]
    lines.append(f"finished already: {done} of {len(jobs)} (skipped when it runs)" if skip
                 else "finished runs are not counted: skip_completed=false trains every run "
                      "again, replacing what its folder holds")
    if other:
        lines.append(f"held by a run of another configuration: {other} of {len(jobs)} (the "
                     "sweep refuses these folders and keeps them; choose another sweep folder, "
                     "or skip_completed=false, which trains every run of the sweep again)")
    if left:
        lines.append(f"to run: {sum(left.values())}, estimated {duration(total)} one at a time "
                     f"on this machine ({torch.get_num_threads()} threads):")
        swept = {key.lstrip("+~") for key, _ in axes(params)}
        for key, n in left.items():
            c = costs[key]
            what = " ".join(o.lstrip("+~") for o in key
                            if o.split("=", 1)[0].lstrip("+~") in swept)
            lines.append(f"  {n:4d} x {duration(c.run_s)}  {what}  ({c.epochs} epochs x "
                         f"{c.steps_per_epoch} steps of {1e3 * c.step_s:.1f} ms)")
    lines.append("Training them now (plan=before; plan=false skips this estimate)."
                 if then_train else "Nothing was trained or written (plan=true).")
    return "\n".join(lines)


def _fingerprint(cfg: DictConfig) -> str | None:
    """The job's fingerprint as its run computes it; None where it cannot be computed here
    (the job reports why when it runs)."""
    from src.run.identity import fingerprint

    try:
        return fingerprint(cfg)
    except Exception:  # noqa: BLE001  (a plan never stops on what the job will report)
        return None


# plan=before (a study's default, conf/study/default.yaml): print the plan, then train.
BEFORE = "before"
ALLOWED = (f"true (print what would run, train nothing), {BEFORE} (print it, then train) or "
           "false")


def check_plan(value: Any) -> None:
    """plan is true, false or before: refused in one paragraph otherwise, before anything
    runs."""
    if not (isinstance(value, bool) or value == BEFORE):
        from src.config.entry import refuse
        from src.errors import ConfigError

        refuse(ConfigError("plan", value, ALLOWED), action="planned or trained")


def plan_run(cfg: DictConfig, run_dir: Path) -> None:
    """plan=true without -m: the run's plan, checked as a run is; the folder Hydra made for
    it (and its parent, when that is empty too) is removed."""
    from src.config.entry import refuse
    from src.config.validate import validate
    from src.errors import ConfigError
    from src.run.preflight import drop_empty_run_dir

    drop_empty_run_dir(run_dir)  # Hydra made it, and its log
    try:
        run_dir.parent.rmdir()
    except OSError:  # not empty: other runs are there
        pass
    check_plan(cfg.plan)
    try:
        validate(cfg)
    except ConfigError as err:
        refuse(err, action="planned or trained")
    print(describe_run(cfg), flush=True)


def describe_run(cfg: DictConfig) -> str:
    """The plan of one run (plan=true without -m)."""
    c = estimate(cfg)
    return (f"Plan of one run into {cfg.paths.run_dir}: estimated {duration(c.run_s)} on this "
            f"machine ({c.epochs} epochs x {c.steps_per_epoch} steps of {1e3 * c.step_s:.1f} "
            f"ms, {torch.get_num_threads()} threads)\nNothing was trained or written "
            f"(plan=true).")
