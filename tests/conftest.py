"""Shared test helpers: compose the real config tree with overrides, run tiny trainings."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import src.config  # noqa: F401  (registers the resolver conf/hydra/default.yaml uses)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Tiny, fast settings for real training runs on the bundled digits.
TINY = ["trainer.epochs=2", "trainer.batch_size=64", "model=cnn", "model.channels=[8,16]",
        "trainer.progress=false"]


def make_cfg(overrides: list[str], run_dir: Path | None = None,
             hydra_config: bool = False) -> DictConfig:
    """Compose conf/config.yaml with overrides; run_dir replaces Hydra's output folder."""
    extra = [f"paths.run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides + extra, return_hydra_config=hydra_config)


def pythonpath() -> str:
    """The checkout first, then whatever PYTHONPATH the caller already had (an environment
    assembled from paths must reach the subprocesses too)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def module_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a subprocess running this checkout's code, W&B off."""
    return {**os.environ, "PYTHONPATH": pythonpath(), "WANDB_MODE": "disabled",
            "HYDRA_FULL_ERROR": "0", **(extra or {})}


def run_module(args: list[str], cwd: Path, timeout: int = 300, env_extra: dict | None = None,
               module: str = "src.train"):
    """Run `python -m MODULE ARGS` in a subprocess from `cwd`, to completion."""
    import subprocess

    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                          env=module_env(env_extra), capture_output=True, text=True,
                          timeout=timeout)


def popen_module(args: list[str], cwd: Path, **popen_kwargs):
    """Start `python -m src.train ARGS` in a subprocess from `cwd` (to stop it midway)."""
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=cwd,
                            env=module_env(), **popen_kwargs)


@pytest.fixture(autouse=True)
def _loggers_enabled():
    """An in-process Hydra run configures logging and disables the loggers that existed
    before it (`disable_existing_loggers`); tests after it must still see their log lines."""
    yield
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.disabled = False


@pytest.fixture
def compile_with(monkeypatch):
    """Point the suite's torch.compile (src.training.model_cache) at a given backend; Dynamo
    and the model cache reset around the test."""
    import torch

    from src.training import model_cache

    def use(backend: object) -> None:
        monkeypatch.setitem(model_cache.COMPILE_OPTIONS, "backend", backend)
    torch._dynamo.reset()
    model_cache.clear()
    yield use
    model_cache.clear()
    torch._dynamo.reset()


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


class CountingBackend:
    """A torch.compile backend that counts graph compilations and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: Any, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward
