"""A sweep's jobs composed once per setting equal Hydra's own composition, job by job."""

from __future__ import annotations

import itertools

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import setup_globals
from hydra.types import RunMode
from omegaconf import OmegaConf

from src.sweep.compose import JobComposer, setting_key
from tests.conftest import CONF


def _loader_and_master(overrides: list[str]):
    GlobalHydra.instance().clear()
    setup_globals()  # Hydra's resolvers (now, hydra)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration(config_name="config", overrides=overrides,
                                       run_mode=RunMode.MULTIRUN)
    return loader, master


def _plain(cfg):
    out = OmegaConf.to_container(cfg, resolve=False)
    out["hydra"].pop("runtime", None)  # cwd, versions, config sources: Hydra's own state
    return out


@pytest.mark.parametrize("fixed,axes", [
    (["+experiment=answer"], {"+panel": ["fmnist_mlp_clean", "fmnist_gru_sym60"],
                              "augmentation.smoothing": ["-0.4", "0", "0.2"],
                              "augmentation.mixup_alpha": ["0", "2"],
                              "trainer.seed": ["0", "1"], "noise.seed": ["0", "1"]}),
    (["trainer.epochs=3"], {"model": ["mlp", "cnn"], "augmentation": ["none", "mixup_smoothing"],
                            "trainer.seed": ["0", "3"]}),
])
def test_jobs_filled_in_from_their_setting_equal_hydras_composition(fixed, axes):
    loader, master = _loader_and_master(fixed)
    jobs = [fixed + [f"{k}={v}" for k, v in zip(axes, values)]
            for values in itertools.product(*axes.values())]
    composer = JobComposer(loader, master)
    for overrides in jobs:
        fast = composer(overrides)
        slow = loader.load_sweep_config(master_config=master, sweep_overrides=overrides)
        assert _plain(fast) == _plain(slow), overrides
        # interpolations follow the job's own values
        assert OmegaConf.to_container(fast.augmentation, resolve=True) == \
            OmegaConf.to_container(slow.augmentation, resolve=True)
    settings = {setting_key(o) for o in jobs}
    assert composer.composed == len(settings) < len(jobs)


def test_a_job_with_another_key_set_is_composed_by_hydra():
    loader, master = _loader_and_master([])
    composer = JobComposer(loader, master)
    composer(["trainer.seed=0"])
    cfg = composer(["trainer.seed=1", "augmentation=mixup"])
    assert composer.composed == 2 and cfg.augmentation.name == "mixup"
