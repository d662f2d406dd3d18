"""trainer.threads=auto shares the cores among the suite's jobs running at once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from src.training import threads
from tests.conftest import TINY, make_cfg


@pytest.fixture
def registry(tmp_path, monkeypatch):
    reg = threads.Registry(tmp_path / "running")
    monkeypatch.setattr(threads, "REGISTRY", reg)
    monkeypatch.delenv("LSMIX_JOBS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    before = torch.get_num_threads()
    yield reg
    reg.unregister()
    torch.set_num_threads(before)  # the rest of the suite keeps this machine's count


def test_auto_divides_the_cores_by_the_live_suite_processes(registry):
    registry.register()
    assert threads.choose_threads("auto") == 8
    others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
              for _ in range(3)]
    try:
        for p in others:
            (registry.folder / str(p.pid)).write_text("")
        assert threads.choose_threads("auto") == 2  # 8 cores, 4 processes
    finally:
        for p in others:
            p.kill()
            p.wait()
    assert threads.choose_threads("auto") == 8  # the ended ones no longer count
    assert sorted(f.name for f in registry.folder.iterdir()) == [registry.mine.name]


def test_the_launchers_parallel_jobs_and_the_environment_count(registry, monkeypatch):
    registry.register()
    assert threads.choose_threads("auto", launcher_jobs=3) == 2
    monkeypatch.setenv("LSMIX_JOBS", "8")
    assert threads.choose_threads("auto", launcher_jobs=3) == 1
    assert threads.choose_threads(3) == 3


def test_a_run_records_its_threads(tmp_path, registry):
    from src.train import train

    res = train(make_cfg(TINY + ["trainer.epochs=1"], run_dir=tmp_path))
    assert res["threads"] == 8 // threads.REGISTRY.count()


def test_threads_is_validated(tmp_path):
    from src.config.validate import validate
    from src.errors import ConfigError

    for bad in ("0", "many", "1.5"):
        with pytest.raises(ConfigError, match="trainer.threads"):
            validate(make_cfg([f"trainer.threads={bad}"], run_dir=tmp_path))
