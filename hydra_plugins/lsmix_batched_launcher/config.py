"""The launchers' configs, `hydra/launcher=batched` and `hydra/launcher=batched_slurm`,
registered in Hydra's ConfigStore when Hydra scans its plugins (before it composes the sweep's
config).

Hydra's scan executes a plugin module before it is in sys.modules, so a dataclass here must
not have string annotations (no `from __future__ import annotations`).
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class BatchedLauncherConf:
    _target_: str = (
        "hydra_plugins.lsmix_batched_launcher.batched_launcher.BatchedLauncher"
    )
    # At most this many runs train together as one batched model (more make larger batches:
    # faster per run for small models, until memory or the device is full).
    max_members: int = 16
    # auto: stack the runs where stacking is faster (src.run.batches.stacking_pays: while one
    # run's step is short); always: every run that can be stacked; never: one run at a time.
    stack: str = "auto"


@dataclass
class BatchedSlurmLauncherConf(SlurmQueueConf):
    """submitit_slurm's keys (partition, account, qos, cpus_per_task, gpus_per_node,
    timeout_min, max_num_timeout, array_parallelism, ...), one SLURM job per batch."""

    _target_: str = (
        "hydra_plugins.lsmix_batched_launcher.slurm_launcher.BatchedSlurmLauncher"
    )
    max_members: int = 16
    stack: str = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf,
                             provider="lsmix")
ConfigStore.instance().store(group="hydra/launcher", name="batched_slurm",
                             node=BatchedSlurmLauncherConf, provider="lsmix")
