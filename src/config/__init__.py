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

from omegaconf import OmegaConf

# How a run executes or reports, not what it computes.
EXECUTION_KEYS: tuple[str, ...] = (
    "trainer.device", "trainer.progress", "trainer.eval_batch_size", "trainer.compile",
    "trainer.checkpoint_every", "trainer.checkpoint_interval_s", "trainer.keep_checkpoint",
    "trainer.parallel_seeds",
    "trainer.threads", "trainer.save_weights", "trainer.save_best", "trainer.profile",
)
# Where an input lives is not what it is: these are replaced by the content hash of the
# file they name (src.run.identity), so a moved archive is the same run and a changed one not.
LOCATION_KEYS: tuple[str, ...] = ("dataset.root", "dataset.npz", "dataset.download", "noise.file")
# Replicates of one setting: each run has its own, the sweep folder shows it as `seed=N`.
REPLICATE_KEYS: tuple[str, ...] = ("trainer.seed",)
# Keys of the launch, the logger and the output folders: never part of what a run is.
LAUNCH_KEYS: tuple[str, ...] = (
    "experiment", "skip_completed", "logger", "logger.mode", "logger.project", "logger.entity",
    "paths.output_dir", "hydra.launcher.n_jobs", "hydra.launcher.max_members", "hydra/launcher",
    "debug", "local",
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


def sweep_dirname_excludes() -> list[str]:
    """The keys a sweep folder's name leaves out (Hydra's override_dirname.exclude_keys)."""
    return [*REPLICATE_KEYS, *EXECUTION_KEYS, *LOCATION_KEYS, *LAUNCH_KEYS]


if not OmegaConf.has_resolver("sweep_dirname_excludes"):
    OmegaConf.register_new_resolver("sweep_dirname_excludes", sweep_dirname_excludes)
