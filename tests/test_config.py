"""Every config file composes, and the root config keeps Hydra's conventions."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, make_cfg

GROUPS = ["dataset", "model", "augmentation", "noise", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = make_cfg([f"{group}={option}"], run_dir=Path("/tmp/x"), hydra_config=True)
    assert cfg[group] is not None
    OmegaConf.to_container(cfg[group], resolve=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = make_cfg([f"+experiment={name}"], run_dir=Path("/tmp/x"), hydra_config=True)
    assert cfg.task_name == name


def test_experiment_is_not_in_root_defaults():
    root = OmegaConf.load(CONF / "config.yaml")
    names = [next(iter(d)) if isinstance(d, dict) else d for d in root.defaults]
    assert "experiment" not in names and names[0] == "_self_"


def test_runs_and_sweeps_write_under_outputs():
    cfg = make_cfg([], hydra_config=True)
    assert "outputs" in cfg.hydra.run.dir and "outputs" in cfg.hydra.sweep.dir
    assert cfg.hydra.job.chdir is False
    assert "trainer.seed" in cfg.hydra.job.config.override_dirname.exclude_keys


def test_where_the_data_lies_is_not_part_of_a_sweep_folders_name():
    """paths.data_dir names where archives are found, not what a run is: a study resumed with
    the data elsewhere finds its runs (the archive's content is in the fingerprint)."""
    cfg = make_cfg([], hydra_config=True)
    excluded = cfg.hydra.job.config.override_dirname.exclude_keys
    assert {"paths.data_dir", "paths.output_dir", "dataset.npz"} <= set(excluded)


def test_every_dataset_declares_its_shape_classes_and_augmentation():
    for p in (CONF / "dataset").glob("*.yaml"):
        ds = OmegaConf.load(p)
        assert len(ds.image_shape) == 3 and ds.num_classes >= 2
        assert len(ds.mean) == len(ds.std) == ds.image_shape[0]
        assert {"crop_padding", "hflip"} <= set(ds.augment)
        if ds.name in ("cifar10", "cifar100", "svhn"):
            assert ds.augment.crop_padding == 4 and ds.augment.hflip


@pytest.mark.parametrize("target", ["demo", "sweep"])
def test_make_study_targets_pass_overrides_the_studies_accept(target):
    """The Hydra overrides `make demo` and `make sweep` add compose with every study."""
    makefile = (CONF.parent / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(makefile) if line.startswith(f"{target}:"))
    recipe = makefile[start + 1]
    extra = [t for t in recipe.split()
             if "=" in t and "$" not in t and not t.startswith("+experiment=")]
    for name in EXPERIMENTS:
        cfg = make_cfg([f"+experiment={name}", *extra], run_dir=Path("/tmp/x"),
                       hydra_config=True)
        assert cfg.hydra.callbacks.analysis.quiet is ("hydra.callbacks.analysis.quiet=true"
                                                      in extra)
