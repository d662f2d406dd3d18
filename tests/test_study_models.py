"""Every study runs with every model: `+experiment=NAME model=<name>` composes, passes
validation and trains, because no study pins a key that belongs to one model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from src.config.validate import validate
from src.models import MODELS
from tests.conftest import CONF, make_cfg
from tests.test_models import SMALL

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def model_file(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))


def study_file(name: str):
    return OmegaConf.load(CONF / "experiment" / f"{name}.yaml")


def test_there_are_studies() -> None:
    assert "quickstart" in EXPERIMENTS and "model_families" in EXPERIMENTS


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_study_composes_and_validates_with_every_model(tmp_path, experiment, model):
    extra = []
    if experiment == "cifar10n":  # its label file is checked too: give it one that exists
        labels = tmp_path / "labels.npz"
        np.savez(labels, clean_label=np.zeros(1, np.int64), worse_label=np.zeros(1, np.int64))
        extra = [f"noise.file={labels}"]
    cfg = make_cfg([f"+experiment={experiment}", f"model={model}", *extra], run_dir=tmp_path)
    validate(cfg)  # builds the model on the meta device for the study's images
    # The model section is the model's own file, whole: the study added no key to it.
    assert OmegaConf.to_container(cfg.model) == model_file(model)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_no_study_sweeps_or_sets_a_model_key(experiment):
    # A model key in the study (or on a sweep axis) would break `model=<another>`: such
    # settings belong in a model config that the study picks (`override /model: ...`).
    study = study_file(experiment)
    assert "model" not in study
    axes = study.hydra.sweeper.params if "hydra" in study else {}
    assert not [axis for axis in axes if str(axis).startswith("model.")]


def test_the_quickstart_keeps_its_convnet(tmp_path):
    # Its runs stay numerically the same: the cnn with two blocks of 16 and 32 channels.
    cfg = make_cfg(["+experiment=quickstart"], run_dir=tmp_path)
    assert OmegaConf.to_container(cfg.model) == {"name": "cnn", "channels": [16, 32],
                                                 "dropout": 0.0}


def test_model_families_sweeps_every_family():
    axis = str(study_file("model_families").hydra.sweeper.params.model).split(",")
    assert set(axis) == {"mlp", "cnn", "preact_resnet18", "lstm", "gru", "vit"}
    assert set(axis) <= set(MODELS)


def tiny_job(experiment: str, model: str, run_dir) -> DictConfig:
    """One epoch of the study's settings on the digits with a small `model`."""
    small = [f"model.{key}={json.dumps(value)}" for key, value in SMALL[model].items()]
    over = [f"+experiment={experiment}", f"model={model}", *small, "dataset=digits",
            "trainer.epochs=1", "trainer.progress=false",
            # one epoch: smoothing must start in it (gls_noise waits 3 epochs by default)
            "augmentation.smoothing_start_epoch=0", "dataset.train_subset=null"]
    if experiment == "gls_stage2":  # its parent runs are tested in tests/test_init_from.py
        over.append("trainer.init_from=null")
    cfg = make_cfg(over, run_dir=run_dir)
    if cfg.noise.name == "human":  # CIFAR-10N's labels belong to CIFAR-10, not the digits
        cfg = make_cfg([*over, "noise=symmetric"], run_dir=run_dir)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_study_trains_with_every_model(tmp_path, experiment, model):
    from src.train import train

    result = train(tiny_job(experiment, model, tmp_path))
    assert result["status"] == "completed" and result["model"] == model
    assert result["experiment"] == experiment
    assert math.isfinite(result["final_test_loss"]) and 0 <= result["final_test_acc"] <= 1
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["status"] == "completed"
