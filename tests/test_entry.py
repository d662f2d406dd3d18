"""Ways in: the console scripts pyproject.toml declares, `python src/train.py`, and make's
clean targets (results are kept unless asked for with FORCE=1)."""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, module_env

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

SCRIPTS = {
    "lsmix-train": "src.train:cli",
    "lsmix-analyse": "analysis.__main__:main",
    "lsmix-bench": "src.tools.bench:cli",
    "lsmix-eval": "src.eval:main",
    "lsmix-sync": "src.tools.wandb_sync:main",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# What pyproject.toml declares: each script goes through src/tools/checkout.py, which runs
# its SCRIPTS target from the checkout it is started in.
WRAPPERS = {"lsmix-train": "train", "lsmix-analyse": "analyse", "lsmix-bench": "bench",
            "lsmix-eval": "evaluate", "lsmix-sync": "sync"}


def test_console_scripts_declared_and_packaged(monkeypatch):
    project = _pyproject()
    assert project["project"]["scripts"] == {
        name: f"src.tools.checkout:{func}" for name, func in WRAPPERS.items()}
    from src.tools import checkout

    called = []
    monkeypatch.setattr(checkout, "run", lambda module, func: called.append(f"{module}:{func}"))
    for name, func in WRAPPERS.items():
        getattr(checkout, func)()
        assert called[-1] == SCRIPTS[name]
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"src", "src.*", "analysis", "analysis.*"} <= set(include)
    # Dependencies are read from requirements.txt: one list.
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == \
        ["requirements.txt"]


# A console script exits with what its function returns: it must be an exit status (int or
# None), since anything else is printed and exits 1.
EXIT_STATUS = {"int", "None", "int | None", "None | int"}


@pytest.mark.parametrize("name", [
    "lsmix-train", "lsmix-analyse", "lsmix-sync",
    "lsmix-bench",
    "lsmix-eval",
])
def test_console_script_target_returns_an_exit_status(name):
    module, func = SCRIPTS[name].split(":")
    target = getattr(importlib.import_module(module), func)
    assert callable(target)
    annotation = inspect.signature(target).return_annotation
    assert str(annotation) in EXIT_STATUS or annotation in (int, None), annotation


def _installed(script: str) -> Path:
    path = Path(sys.executable).parent / script
    if not path.exists():
        pytest.skip(f"{script} is not installed in this environment (make install does it)")
    return path


def test_installed_console_scripts_run(tmp_path):
    train = subprocess.run([str(_installed("lsmix-train")), "--help"], cwd=tmp_path,
                           env=module_env(), capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    groups = [line for line in train.stdout.splitlines() if line.startswith("augmentation:")]
    assert groups and {"mixup", "mixup_smoothing", "none", "smoothing"} <= {
        g.strip() for g in groups[0].split(":", 1)[1].split(",")}
    sync = subprocess.run([str(_installed("lsmix-sync")), str(tmp_path), "--dry-run"],
                          cwd=tmp_path, env=module_env(), capture_output=True, text=True,
                          timeout=120)
    assert sync.returncode == 0 and "No offline W&B runs" in sync.stdout
    # Hydra's shell completion works on the script (not on `python -m`).
    complete = subprocess.run([str(_installed("lsmix-train")), "-sc", "query=bash"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=module_env({"COMP_LINE": "lsmix-train augmentation=mixup_"}))
    assert "augmentation=mixup_smoothing" in complete.stdout


# `python src/train.py` as on a checkout that is not installed: the script's folder (src/) is
# sys.path[0], nothing maps the `src` package, and PYTHONPATH does not name the checkout.
AS_SCRIPT = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path[0] = {src!r}
sys.argv = [{script!r}, "--help"]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_train_runs_as_a_script(tmp_path):
    script = ROOT / "src" / "train.py"
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p and Path(p).resolve() != ROOT]
    env = {**module_env(), "PYTHONPATH": os.pathsep.join(pythonpath)}
    code = AS_SCRIPT.format(src=str(script.parent), script=str(script))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "== Configuration groups ==" in out.stdout


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Path:
    """The Makefile in an empty folder with some results and caches (no environment needed:
    the clean targets do not build one)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "requirements-dev.txt", "constraints.txt"):
        (tmp_path / name).touch()
    (tmp_path / "outputs" / "study" / "cell").mkdir(parents=True)
    (tmp_path / "outputs" / ".gitkeep").touch()
    (tmp_path / "outputs" / "study" / "cell" / "results.json").write_text("{}")
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    (tmp_path / ".pytest_cache").mkdir()
    return tmp_path


def _make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items()
                                           if k not in ("FORCE", "MAKEFLAGS")})


def test_make_clean_keeps_results(make_sandbox):
    assert _make(make_sandbox, "clean").returncode == 0
    assert not (make_sandbox / "src" / "__pycache__").exists()
    assert not (make_sandbox / ".pytest_cache").exists()
    assert (make_sandbox / "outputs" / "study" / "cell" / "results.json").exists()


def test_make_clean_outputs_needs_force(make_sandbox):
    dry = _make(make_sandbox, "clean-outputs")
    assert dry.returncode == 0 and "outputs/study" in dry.stdout and "FORCE=1" in dry.stdout
    assert (make_sandbox / "outputs" / "study" / "cell" / "results.json").exists()
    assert _make(make_sandbox, "clean-outputs", "FORCE=1").returncode == 0
    assert sorted(p.name for p in (make_sandbox / "outputs").iterdir()) == [".gitkeep"]
    assert "nothing to delete" in _make(make_sandbox, "clean-outputs").stdout
    helped = _make(make_sandbox, "help").stdout
    assert "make clean-outputs" in helped and "keeps outputs/" in helped


@pytest.mark.parametrize("how", [["OUT=/tmp/x"], ["ARGS=paths.output_dir=/tmp/x"]])
def test_make_demo_and_analysis_read_the_report_from_the_output_folder(make_sandbox, how):
    demo = _make(make_sandbox, "-n", "demo", *how).stdout
    assert "paths.output_dir=/tmp/x" in demo
    assert "cat /tmp/x/quickstart/analysis/report.md" in demo
    assert "outputs/quickstart" not in demo
    assert "-m analysis /tmp/x/quickstart" in _make(make_sandbox, "-n", "analysis", *how).stdout
    assert "OUT=DIR" in _make(make_sandbox, "help").stdout


def test_make_without_out_keeps_the_default_outputs_folder(make_sandbox):
    demo = _make(make_sandbox, "-n", "demo").stdout
    assert "paths.output_dir" not in demo and "cat outputs/quickstart/analysis/report.md" in demo
