"""The launcher's config, `hydra/launcher=batched`, registered in Hydra's ConfigStore when
Hydra scans its plugins (before it composes the sweep's config).

Hydra's scan executes a plugin module before it is in sys.modules, so a dataclass here must
not have string annotations (no `from __future__ import annotations`).
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class BatchedLauncherConf:
    _target_: str = (
        "hydra_plugins.lsmix_batched_launcher.batched_launcher.BatchedLauncher"
    )
    # At most this many runs train together as one batched model (more make larger batches:
    # faster per run for small models, until memory or the device is full).
    max_members: int = 16


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf,
                             provider="lsmix")
