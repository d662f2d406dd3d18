"""Runs that start from another run (`trainer.init_from`): the checks before anything is
written, and what a child records of its parent.

Wei et al. (ICML 2022, "To Smooth or Not? When Label Smoothing Meets Noisy Labels"; code
UCSC-REAL/negative-label-smoothing) run negative label smoothing as two programs: a
cross-entropy warm-up that keeps a checkpoint (`main_warmup.py`), then a fine-tuning run that
loads it into a fresh optimiser (`main_GLS_load.py`); without the warm-up, negative smoothing
diverges (their issue #3). Here the second program is a run whose `trainer.init_from` names the
first's folder. It loads the parent's model weights only, `trainer.init_weights` choosing the
file: `best` (best.pt, the epoch of the best *noisy-validation* accuracy; their code keeps the
epoch of the best *test* accuracy) or `last` (last.pt, the final model). Its optimiser,
schedule and generators are its own, from epoch 1 (src.training.trainer loads the weights as
the first epoch begins). The files are written per run, also by seeds trained together
(src.run.lifecycle writes each member's into its own folder).

Identity: the folder says where the parent lies, not what it is, so `trainer.init_from` is a
location key (src.config.LOCATION_KEYS), as a dataset archive's path is. The child's input
record of it (results.json `inputs`) holds the weights file's content hash with the parent's
folder, fingerprint and setting (its fingerprint without its seeds, what the children of one
study's parents share), and the child's fingerprint covers the hash and the parent's
fingerprint (src.run.identity): a changed or retrained parent makes the child another run,
which `skip_completed` never takes for a completed one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.files import read_json
from src.run.records import RESULTS

INIT_FROM = "trainer.init_from"
INIT_WEIGHTS = "trainer.init_weights"
# The resolved config every run saves beside its results (src.run.lifecycle).
CONFIG = "config.yaml"
# What must agree between a parent and its child besides the weights' shapes.
SAME = ("model.name", "dataset.name", "dataset.num_classes")
# ... and the data: the noisy labels, the validation split and the training subset. A child
# on other labels or another split would validate on images its parent trained on (and
# `setting` pools children by their parents' settings without seeds).
SAME_DATA = ("dataset.val_fraction", "dataset.val_seed", "dataset.train_subset",
             "dataset.train_subset_seed")


def parent_folder(cfg: DictConfig) -> Path | None:
    """The folder `trainer.init_from` names, or None for a run trained from scratch."""
    value = cfg.trainer.get("init_from")
    return None if value is None else Path(str(value)).expanduser()


def weights_file(cfg: DictConfig) -> Path | None:
    """The parent's weights file the run starts from, or None."""
    if parent_folder(cfg) is None:  # torch is imported only for a run that has a parent
        return None
    from src.training.trainer import init_weights_file

    return init_weights_file(cfg.trainer)


def parent_identity(cfg: DictConfig) -> dict[str, Any]:
    """The parent's folder, fingerprint and setting (from its results.json; None when it has
    none), for the child's input record of `trainer.init_from`."""
    folder = parent_folder(cfg)
    results = (read_json(folder / RESULTS) if folder is not None else None) or {}
    return {"run_dir": str(folder), "fingerprint": results.get("config_fingerprint"),
            "setting": setting_hash(results) if results else None}


def setting_hash(results: dict[str, Any]) -> str:
    """A run's setting without its replicates: a hash of its results' `config` (which leaves
    the seeds out) and of its inputs' contents (of a parent run: that run's setting). Each seed
    of a stage-2 study starts from another parent, of one setting: this is what they share."""
    inputs = {k: v.get("setting") or v.get("hash")
              for k, v in (results.get("inputs") or {}).items()}
    blob = json.dumps({"config": results.get("config"), "inputs": inputs}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_parents(members: list[DictConfig]) -> None:
    """Each member's parent (check_parent); members trained together as one model (trainer.
    parallel_seeds) start from one parent, as the batched model loads one file."""
    for cfg in members:
        check_parent(cfg)
    folders = [parent_folder(cfg) for cfg in members]
    if len(set(folders)) > 1:
        raise ConfigError("trainer.parallel_seeds", [int(c.trainer.seed) for c in members],
                          f"[] when {INIT_FROM} names another run for each seed",
                          hint="seeds trained together start from one run: train them as "
                               "separate jobs (-m trainer.seed=...), or under "
                               "hydra/launcher=batched, which batches each parent's runs")


def check_parent(cfg: DictConfig) -> None:
    """Refuse, before anything is written, a `trainer.init_from` that does not name another,
    completed run of this model, dataset and number of classes, with the weights file
    `trainer.init_weights` chooses, of this run's architecture."""
    folder = parent_folder(cfg)
    if folder is None:
        return
    value = str(cfg.trainer.init_from)
    allowed = "null (train from scratch) or the folder of another, completed run to start from"
    if not folder.is_dir():
        raise ConfigError(INIT_FROM, value, allowed, hint="no such folder")
    if folder.resolve() == Path(str(cfg.paths.run_dir)).expanduser().resolve():
        raise ConfigError(INIT_FROM, value, allowed, hint="it is this run's own folder")
    results = read_json(folder / RESULTS)
    if results is None or results.get("status") != "completed":
        why = (f"{folder} holds no readable {RESULTS}" if results is None
               else f"its run is {results.get('status')}")
        raise ConfigError(INIT_FROM, value, allowed, hint=why)
    parent = _parent_config(folder, value)
    for key in SAME:
        there, here = OmegaConf.select(parent, key), OmegaConf.select(cfg, key)
        if there != here:
            raise ConfigError(INIT_FROM, value, "a run of this run's model, dataset and number "
                              "of classes", hint=f"{key} is {there!r} there, {here!r} here")
    noise = [f"noise.{k}" for k in sorted(set(parent.get("noise", {})) | set(cfg.noise))
             if k != "file"]  # where human labels lie is not what they are
    for key in (*SAME_DATA, *noise):
        there, here = OmegaConf.select(parent, key), OmegaConf.select(cfg, key)
        if there != here:
            raise ConfigError(INIT_FROM, value, "a run on this run's data: the same noisy "
                              "labels, validation split and training subset", hint=f"{key} is "
                              f"{there!r} there, {here!r} here: this run could validate on "
                              "images its parent trained on")
    path = weights_file(cfg)
    assert path is not None
    if not path.is_file():
        saved = [w for w in ("best", "last") if (folder / f"{w}.pt").is_file()]
        raise ConfigError(INIT_WEIGHTS, str(cfg.trainer.init_weights),
                          f"one of {saved}, the weights the run in {INIT_FROM} saved" if saved
                          else f"a weights file of the run in {INIT_FROM}: it saved none",
                          hint=f"no {path.name} in {folder}; best.pt is written with a validation "
                               "split (dataset.val_fraction > 0) and trainer.save_best=val, "
                               "last.pt with trainer.save_weights=true")
    check_architecture(cfg, parent, path, value)


def _parent_config(folder: Path, value: str) -> DictConfig:
    """The parent's resolved config (its config.yaml)."""
    try:
        return OmegaConf.load(folder / CONFIG)
    except Exception as err:  # missing, or not YAML
        raise ConfigError(INIT_FROM, value, f"a run folder with a readable {CONFIG}",
                          hint=str(err).splitlines()[0] if str(err) else type(err).__name__
                          ) from None


def check_architecture(cfg: DictConfig, parent: DictConfig, path: Path, value: str) -> None:
    """The weights file holds exactly the tensors, of the same shapes, that this run's model
    has (built on the meta device: no memory, no compute)."""
    import torch

    from src.models import build_model
    from src.training.checkpoint import load_weights

    try:
        weights = load_weights(path)
    except Exception as err:  # truncated, corrupt, not a torch file, or no weights in it
        raise ConfigError(INIT_FROM, value, "a run whose weights file can be read",
                          hint=f"{path} is not a weights file torch reads "
                               f"({type(err).__name__})") from None
    shape = tuple(int(v) for v in cfg.dataset.image_shape)
    with torch.device("meta"):
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True), shape,
                            int(cfg.dataset.num_classes))
    wanted = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    found = {k: tuple(t.shape) for k, t in weights.items()}
    if found == wanted:
        return
    odd = sorted(set(found) ^ set(wanted)) or sorted(k for k in wanted if found[k] != wanted[k])
    name = odd[0]
    differ = [f"model.{k}: {parent.model.get(k)!r} there, {cfg.model.get(k)!r} here"
              for k in sorted(set(parent.model) | set(cfg.model))
              if parent.model.get(k) != cfg.model.get(k)]
    raise ConfigError(INIT_FROM, value, "a run of this run's architecture (the same model "
                      "settings)", hint="; ".join(differ) or f"{name}: "
                      f"{list(found.get(name, ()))} in {path.name}, {list(wanted.get(name, ()))} "
                      "in this run's model")
