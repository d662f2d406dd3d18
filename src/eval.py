"""Evaluate a run's saved weights: `python -m src.eval ckpt_path=RUN_DIR [which=last|best]
[temperature=fit] [noise=NAME noise.KEY=VALUE ...] [device=cpu]` (`lsmix-eval`).

The model and data are rebuilt from the run folder's config.yaml (the resolved config every run
saves) by the suite's own code (src.data.tensors.prepare_data, src.training.model_cache.
fresh_model, SingleTrainer.predict) and evaluated as the run evaluates an epoch
(src.run.lifecycle.evaluate_members): test accuracy, loss and calibration, noisy-validation
accuracy, what the model does with the noisy training labels. On the device the run used, its
last weights give the run's final test numbers exactly; the weights of a member of seeds
trained together (trainer.parallel_seeds) give them to float rounding, as a single model's
arithmetic is not the batched one's.

- `which=last`: last.pt (the final model), else the run's kept checkpoint.pt
  (trainer.keep_checkpoint=true); `which=best`: best.pt, the model of the best noisy-validation
  accuracy. `ckpt_path` may also name a weights or checkpoint file inside a run folder.
- `temperature=fit`: temperature scaling (Guo et al., ICML 2017): the one T > 0 that minimises
  the NLL of the noisy-validation logits / T, fitted by LBFGS; the test ECE and NLL before
  (test_ece, test_loss) and after (test_ece_ts, test_loss_ts). Accuracy does not change.
- A run trained before the suite gained a config key evaluates with that key at its current
  default (the value that leaves a new option off), from the run's config group file; such keys
  are listed in eval.json (`filled_in`), and a key the suite no longer knows is an error.
- `noise=NAME`: the training split's labels as that noise model (conf/noise/NAME.yaml, with any
  noise.KEY=VALUE) draws them, for the very images the run trained on, so memorized/recovered
  say what the model does with another corruption; test and validation stay the run's.

The record goes to eval.json beside results.json (atomically). Earlier evaluations are kept:
a new one first moves the previous eval.json to eval-N.json (N = 1, 2, ... in the order they
were made), so eval.json is always the newest.
Bad input (no folder, no weights, a config that fails validation) is one paragraph and exit
code 2, and nothing is written.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

if not __package__:  # `python src/eval.py`: Python put src/ on the path, not the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from src.config.entry import REFUSED, compose_command_line, refusal
from src.config.validate import choice, validate
from src.data.arrays import load_arrays, stratified_split
from src.data.subset import subset_indices
from src.data.tensors import Split, TrainData, prepare_data
from src.errors import ConfigError, did_you_mean
from src.files import read_json, write_json_atomic
from src.noise import inject_noise
from src.run.identity import fingerprint
from src.run.records import METRICS, RESULTS, now_iso, read_metrics
from src.training.checkpoint import BEST_WEIGHTS, CHECKPOINT, LAST_WEIGHTS, load_weights
from src.training.device import resolve_execution
from src.training.evaluate import classification_metrics, fit_temperature
from src.training.model_cache import fresh_model
from src.training.trainer import SingleTrainer

log = logging.getLogger(__name__)

EVAL = "eval.json"
# An absolute path, so the entry works however it is imported (module, test, console script).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
CONFIG = "config.yaml"
WHICH = choice("last", "best")
TEMPERATURE = choice("none", "fit")


def evaluate(ckpt_path: str | Path, which: str = "last", temperature: str = "none",
             noise: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Evaluate the weights `ckpt_path` names, write the run's eval.json, return its record.

    `noise`: a whole noise section (as conf/noise/*.yaml composes it) for the training labels;
    `device`: where to evaluate (None: the run's trainer.device). ConfigError before anything
    is written when the input cannot be used.
    """
    WHICH("which", which)
    if noise is not None:  # a plain copy: it is recorded in eval.json as it is
        noise = (OmegaConf.to_container(noise, resolve=True) if OmegaConf.is_config(noise)
                 else dict(noise))
    TEMPERATURE("temperature", temperature)
    run_dir, weights_file = locate(Path(ckpt_path), which)
    results = read_json(run_dir / RESULTS) or {}
    cfg, filled = run_config(run_dir, device)
    if temperature == "fit" and not float(cfg.dataset.val_fraction) > 0:
        raise ConfigError("temperature", temperature, "none for a run without a validation "
                          "split", hint=f"{run_dir} was trained with dataset.val_fraction=0")
    eval_cfg = with_noise(cfg, noise, run_dir) if noise is not None else cfg

    execution = resolve_execution(cfg.trainer)
    # []: no noise files
    data, noisy = prepare_data(cfg, execution.device, execution.channels_last, [])
    if noise is not None:  # only the labels: the images are on the device already
        arrays = load_arrays(cfg.dataset)
        other = inject_noise(arrays.y_train, data.num_classes, eval_cfg.noise,
                             dataset=cfg.dataset.name, images=arrays.x_train)
        data = relabel_training_split(data, cfg, noisy.given_labels, other.given_labels)
    seed = int(cfg.trainer.seed)
    model = fresh_model(cfg.model, tuple(int(v) for v in cfg.dataset.image_shape),
                        data.num_classes, execution, seed)
    try:
        weights = load_weights(weights_file, member_index(results, seed))
    except Exception as err:  # truncated, corrupt, not a torch file, or no weights in it
        raise ConfigError("ckpt_path", str(weights_file), "a weights file (last.pt, best.pt) "
                          "or a checkpoint.pt", hint=_first_line(err)) from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError("ckpt_path", str(weights_file), f"weights of the {cfg.model.name} "
                          f"model {run_dir / CONFIG} describes", hint=_first_line(err)) from None
    trainer = SingleTrainer(model, data, cfg.trainer, cfg.augmentation, execution, seed)

    from src.run.lifecycle import evaluate_members  # the run's own evaluation of an epoch

    fp = fingerprint(cfg)
    record: dict[str, Any] = {
        "run_dir": str(run_dir), "weights": str(weights_file),
        "weights_epoch": weights_epoch(run_dir, weights_file, results),
        "run_status": results.get("status"), "filled_in": filled,
        "overrides": {"which": which, "temperature": temperature, "noise": noise,
                      "device": device},
        "config_fingerprint": fp,
        "fingerprint_matches_run": (fp == results["config_fingerprint"]
                                    if "config_fingerprint" in results else None),
        "device": str(execution.device), "amp": execution.amp, "evaluated_at": now_iso(),
        **evaluate_members(trainer, data, [0])[0],
    }
    if filled:
        log.warning("keys the run's config predates, at their current defaults: %s", filled)
    elif record["fingerprint_matches_run"] is False:
        log.warning("the fingerprint of %s differs from the run's: %s", run_dir / CONFIG,
                    changed_since(cfg, results))
    if temperature == "fit":
        record.update(temperature_scaling(trainer, data))
    keep_previous(run_dir)
    write_json_atomic(run_dir / EVAL, record)
    return record


def keep_previous(run_dir: Path) -> Path | None:
    """Move the run's eval.json, if any, to eval-N.json (the next free N): a new evaluation
    never overwrites an earlier one. Where it went, or None."""
    current = run_dir / EVAL
    if not current.is_file():
        return None
    taken = [int(m.group(1)) for p in run_dir.glob("eval-*.json")
             if (m := re.fullmatch(r"eval-(\d+)\.json", p.name))]
    kept = run_dir / f"eval-{max(taken, default=0) + 1}.json"
    os.replace(current, kept)
    return kept


def changed_since(cfg: DictConfig, results: dict[str, Any]) -> str:
    """What changed since the run, as far as its records tell: the input files whose content
    differs from the recorded one, by key and path, else the suite's fingerprinting."""
    from src.run.preflight import changed_inputs

    changed = changed_inputs(cfg, results)
    if changed:
        return "; ".join(f"the content of {k} ({path}) changed since the run"
                         for k, path in changed.items())
    return "its input files, or how the suite fingerprints a run, changed since"


def locate(path: Path, which: str) -> tuple[Path, Path]:
    """The run folder and the weights file `ckpt_path` and `which` name."""
    if not path.exists():
        raise ConfigError("ckpt_path", str(path), "a run folder (holding config.yaml) or a "
                          "weights file inside one", hint="no such file or folder")
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / CONFIG).is_file():
        raise ConfigError("ckpt_path", str(path), "a run folder (holding config.yaml) or a "
                          "weights file inside one", hint=f"{run_dir} has no {CONFIG}")
    if path.is_file():
        return run_dir, path
    names = [BEST_WEIGHTS] if which == "best" else [LAST_WEIGHTS, CHECKPOINT]
    for name in names:
        if (run_dir / name).is_file():
            return run_dir, run_dir / name
    how = ("trainer.save_best=val and a validation split (dataset.val_fraction > 0)"
           if which == "best" else "trainer.save_weights=true (or trainer.keep_checkpoint=true)")
    raise ConfigError("which", which, f"weights the run saved ({' or '.join(names)})",
                      hint=f"{run_dir} holds none; runs write them with {how}")


def run_config(run_dir: Path, device: str | None) -> tuple[DictConfig, dict[str, Any]]:
    """The run's config, completed with the keys it predates (`backfill`), in its current
    folder, on `device`, checked as a run's config is; and the keys filled in."""
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
        cfg.paths.run_dir = str(run_dir)  # the folder may have moved since the run
    except Exception as err:  # not YAML, or not a run's config
        raise ConfigError("ckpt_path", str(run_dir), f"a run folder with a readable {CONFIG}",
                          hint=_first_line(err)) from None
    filled = backfill(cfg)
    if device is not None:
        cfg.trainer.device = device
    _validate(cfg, f"in {run_dir / CONFIG}")
    return cfg, filled


# Where each section's current defaults are: its config group's file of the run's option.
GROUP_FILES = {"dataset": "dataset/{name}", "model": "model/{name}",
               "augmentation": "augmentation/{name}", "noise": "noise/{name}",
               "trainer": "trainer/default"}


def backfill(cfg: DictConfig) -> dict[str, Any]:
    """Add, in place, the keys the suite gained since the run, at the values its config group
    file now gives them; return them by dotted key. Values that refer to other keys (${...})
    are not filled: validation then names the missing key."""
    filled: dict[str, Any] = {}
    for section, file in GROUP_FILES.items():
        node = cfg.get(section)
        if not OmegaConf.is_dict(node):
            continue
        path = Path(CONF_DIR) / f"{file.format(name=node.get('name'))}.yaml"
        if path.is_file():
            defaults = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            defaults.pop("defaults", None)
            _fill(node, defaults, section, filled)
    return filled


def _fill(node: DictConfig, defaults: dict[str, Any], prefix: str,
          filled: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in node:
            if not (isinstance(value, str) and "${" in value):
                node[key] = value
                filled[f"{prefix}.{key}"] = value
        elif isinstance(value, dict) and OmegaConf.is_dict(node[key]):
            _fill(node[key], value, f"{prefix}.{key}", filled)


def with_noise(cfg: DictConfig, noise: dict[str, Any], run_dir: Path) -> DictConfig:
    """The run's config with another noise section, checked as a run's config is."""
    out = copy.deepcopy(cfg)
    out.noise = OmegaConf.create(noise)
    _validate(out, f"{run_dir / CONFIG} with noise={noise.get('name')}")
    return out


def _validate(cfg: DictConfig, where: str) -> None:
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(err.key, err.value, err.allowed, hint=where) from None


def relabel_training_split(data: TrainData, cfg: DictConfig, run_labels: np.ndarray,
                           other_labels: np.ndarray) -> TrainData:
    """`data` with the training split's labels taken from `other_labels` (full training set,
    another noise draw), for the same images: the run's split is carved on its own noisy
    labels (src.data.tensors.prepare_data), so its indices come from `run_labels`."""
    ds = cfg.dataset
    pool = subset_indices(ds, len(run_labels), int(cfg.noise.seed))
    pool = np.arange(len(run_labels)) if pool is None else pool
    frac = float(ds.get("val_fraction", 0.0))
    idx = (pool[stratified_split(run_labels[pool], frac, int(ds.get("val_seed", 0)))[0]]
           if frac > 0 else pool)
    if not np.array_equal(run_labels[idx], data.train.y.cpu().numpy()):
        raise RuntimeError("the training split differs from prepare_data's: "
                           "relabel_training_split must carve it as prepare_data does")
    given = torch.from_numpy(other_labels[idx]).to(data.train.y.device)
    return replace(data, train=Split(data.train.x, given))


def member_index(results: dict[str, Any], seed: int) -> int:
    """Which member of a checkpoint of seeds trained together is this run (0 otherwise)."""
    seeds = str(results.get("trained_with_seeds") or "").split(",")
    return seeds.index(str(seed)) if str(seed) in seeds else 0


def weights_epoch(run_dir: Path, weights_file: Path, results: dict[str, Any]) -> int | None:
    """The epoch the weights are from: best.pt's is the first epoch of the best noisy
    validation accuracy (as the run picks it); the last weights' the last epoch trained."""
    if weights_file.name == BEST_WEIGHTS:
        rows = [r for r in read_metrics(run_dir / METRICS) if r.get("val_acc") is not None]
        return max(rows, key=lambda r: r["val_acc"])["epoch"] if rows else None
    if weights_file.name in (LAST_WEIGHTS, CHECKPOINT):
        return results.get("epochs_done")
    return None


def temperature_scaling(trainer: SingleTrainer, data: TrainData) -> dict[str, float]:
    """Temperature scaling fitted on the noisy validation split (Guo et al., ICML 2017)."""
    assert data.val is not None
    val, test = trainer.predict(data.val.x)[0], trainer.predict(data.test.x)[0]
    t = fit_temperature(val, data.val.y)
    after_val = classification_metrics(val / t, data.val.y)
    after_test = classification_metrics(test / t, data.test.y)
    return {"temperature": t, "val_loss_ts": after_val["loss"],
            "test_loss_ts": after_test["loss"], "test_ece_ts": after_test["ece"]}


def summary_line(record: dict[str, Any]) -> str:
    """One line for the console: what was evaluated and its main numbers."""
    line = (f"{record['weights']} (epoch {record['weights_epoch']}): test_acc "
            f"{record['test_acc']:.4f} loss {record['test_loss']:.4f} ece {record['test_ece']:.4f}")
    if record.get("temperature") is not None:
        line += (f"; temperature {record['temperature']:.3f}: ece {record['test_ece']:.4f} -> "
                 f"{record['test_ece_ts']:.4f}, loss {record['test_loss']:.4f} -> "
                 f"{record['test_loss_ts']:.4f}")
    if record["overrides"]["noise"] is not None:
        line += (f"; training labels under noise={record['overrides']['noise']['name']}: "
                 f"memorized {_fmt(record['memorized'])}, recovered {_fmt(record['recovered'])}")
    return line + f"\n  -> {Path(record['run_dir']) / EVAL}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def check_keys(cfg: DictConfig) -> None:
    """Every key is one the command reads: one added with `+key=value` is refused, not
    ignored. The keys are conf/eval.yaml's and its config groups' (noise, paths)."""
    spec = OmegaConf.load(Path(CONF_DIR) / "eval.yaml")
    groups = [next(iter(d)) for d in spec.get("defaults", []) if OmegaConf.is_dict(d)]
    known = sorted({*(k for k in spec if k not in ("defaults", "hydra")),
                    *(g for g in groups if not str(g).startswith("override"))})
    for key in cfg:
        if key not in known:
            raise ConfigError(str(key), OmegaConf.to_container(cfg, resolve=False)[key],
                              f"a key of the eval command: {known}",
                              hint=did_you_mean(str(key), known) or "the command reads no other")


def run_cli(cfg: DictConfig) -> int | None:
    """Evaluate what the composed eval config names; 2 for bad input (nothing written)."""
    try:
        check_keys(cfg)
        try:
            ckpt_path = cfg.ckpt_path
        except MissingMandatoryValue:
            raise ConfigError("ckpt_path", "???", "a run folder or a weights file",
                              hint="python -m src.eval ckpt_path=RUN_DIR") from None
        noise = (OmegaConf.to_container(cfg.noise, resolve=True)
                 if cfg.get("noise") is not None else None)
        record = evaluate(ckpt_path, cfg.which, cfg.temperature, noise, cfg.device)
    except ConfigError as err:
        print(refusal(err, "evaluated"), file=sys.stderr)
        return 2
    print(summary_line(record))
    return None


_STATUS: list[int | None] = []


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    _STATUS.append(run_cli(cfg))


def quote_path(args: list[str]) -> list[str]:
    """The arguments with `ckpt_path`'s value quoted for Hydra, whose override grammar reads
    `=` and `,` in a value as syntax: run folders of a sweep are named `key=value,...`."""
    key = "ckpt_path="
    return [f"{key}'{a[len(key):]}'" if a.startswith(key) and "'" not in a else a
            for a in args]


def main() -> int | None:
    """The command: its exit status (None: every evaluation succeeded, 2: bad input)."""
    _STATUS.clear()
    sys.argv[1:] = quote_path(sys.argv[1:])
    try:  # a misspelt key or option: the suite's refusal, not Hydra's message and status 1
        compose_command_line(CONF_DIR, "eval", sys.argv[1:])
    except REFUSED as err:
        print(refusal(err, "evaluated"), file=sys.stderr)
        return 2
    _hydra_main()
    return max((s for s in _STATUS if s), default=None)


if __name__ == "__main__":
    sys.exit(main())
