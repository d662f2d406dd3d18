"""The config stage: which keys define a run, which only say how it executes, and the
checks a composed config passes before anything is trained or written (src.config.validate).

The key lists below are the one place these facts are written. The fingerprint of a run
(src.run.identity) leaves out the execution and location keys, and Hydra's sweep folder names
(`hydra.job.override_dirname`, conf/hydra/default.yaml) leave out those and the replicate
and launch keys, through the `sweep_dirname_excludes` resolver registered here. The runs
trained together as one batched model (src.training.trainer.StackedTrainer) may differ in the
batchable keys only (src.run.batches checks it, the batched launcher groups a sweep by it).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"

# How a run executes or reports, not what it computes.
EXECUTION_KEYS: tuple[str, ...] = (
    "trainer.device", "trainer.progress", "trainer.eval_batch_size", "trainer.compile",
    "trainer.checkpoint_every", "trainer.checkpoint_interval_s", "trainer.keep_checkpoint",
    "trainer.parallel_seeds",
    "trainer.threads", "trainer.save_weights", "trainer.save_best", "trainer.profile",
    "trainer.overfit_pass_acc",
)
# Where an input lives is not what it is: these are replaced by the content hash of the
# file they name (src.run.identity), so a moved archive is the same run and a changed one not.
LOCATION_KEYS: tuple[str, ...] = ("dataset.root", "dataset.npz", "dataset.archives",
                                  "dataset.download", "noise.file",
                                  # the run a run starts from: its weights' hash and its
                                  # fingerprint stand for it (src.run.init_from)
                                  "trainer.init_from")
# Replicates of one setting, each with the results.json field it is recorded as: the training
# seed and the seed of the label-noise draw. Neither is a setting (not in a run's `config`
# record); the analysis pools a cell's runs over both (each noise draw is a sample of the
# same noise model, as each initialisation is of the same training).
REPLICATES: dict[str, str] = {"trainer.seed": "seed", "noise.seed": "noise_seed"}
REPLICATE_KEYS: tuple[str, ...] = tuple(REPLICATES)
# The replicate a sweep folder shows as its last part, `seed=N` (conf/hydra/default.yaml);
# the noise seed stays in the folder's name, so each draw has a folder of its own.
SEED_FOLDER_KEY = "trainer.seed"
# Keys of the launch, the logger and the output folders: never part of what a run is.
LAUNCH_KEYS: tuple[str, ...] = (
    "experiment", "hparams_search", "skip_completed", "logger", "logger.mode", "logger.project",
    "logger.entity",
    "paths.output_dir", "paths.data_dir", "hydra.launcher.n_jobs", "hydra.launcher.max_members",
    "hydra.launcher.stack",
    "hydra/launcher", "debug", "local", "plan",
)
# What may differ between runs trained together as one batched model: each member's draws come
# from its own generators seeded by its seed, its lambdas from its own alpha, and its loss takes
# its own uniform mass (a (K,) tensor), from its own epoch on. Everything else (model, data,
# noise, optimiser, batch size, epochs, the other mixing keys) is one for the whole batch.
# `augmentation.name` only names what the values make of it (mixup, smoothing, ...).
BATCHABLE_KEYS: tuple[str, ...] = (
    "trainer.seed", "augmentation.name", "augmentation.mixup_alpha", "augmentation.smoothing",
    "augmentation.smoothing_start_epoch",
)


# Keys added after runs were recorded, each with the value that does what runs did before it
# existed. At that value a key is left out of a run's fingerprint and of its settings record
# (results.json `config`), so every run recorded before the key existed keeps its identity:
# it is skipped as completed, and the analysis pools it with new runs of the same settings.
ADDED_KEYS: dict[str, Any] = {
    "noise.sampling": "exact",
    "trainer.decay_start": 0,
    "trainer.beta1_after_decay": None,
    "trainer.steps_per_epoch": None,
    "trainer.normalize": True,
    "trainer.last_k": 10,
    "trainer.grad_clip": None,
    "dataset.train_subset": None,
    "dataset.train_subset_seed": None,
    "trainer.init_from": None,
    "trainer.init_weights": "best",
    "trainer.memorization_subset": None,
}


def sweep_dirname_excludes() -> list[str]:
    """The keys a sweep folder's name leaves out (Hydra's override_dirname.exclude_keys)."""
    return [SEED_FOLDER_KEY, *EXECUTION_KEYS, *LOCATION_KEYS, *LAUNCH_KEYS]


def if_negative(value: float, then: Any, otherwise: Any) -> Any:
    """`then` for a negative value, else `otherwise`: e.g. a warm-up for negative smoothing
    only, `${if_negative:${augmentation.smoothing},10,0}` (conf/experiment/answer.yaml)."""
    return then if float(value) < 0 else otherwise


if not OmegaConf.has_resolver("sweep_dirname_excludes"):
    OmegaConf.register_new_resolver("sweep_dirname_excludes", sweep_dirname_excludes)
if not OmegaConf.has_resolver("if_negative"):
    OmegaConf.register_new_resolver("if_negative", if_negative)


@cache
def _group_defaults(group: str, option: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))


def with_defaults(group: str, option: str, values: Any) -> dict[str, Any]:
    """`values` (a section of a composed config, or a partial mapping as a bench or a test
    builds one) over the values of conf/<group>/<option>.yaml: the config files are the one
    place the defaults are written, so code reads a key as `section[key]`, never with a
    default of its own."""
    return {**_group_defaults(group, option), **dict(values)}
