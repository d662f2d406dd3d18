"""The console scripts run the checkout they are started in (src/tools/checkout.py): a clone
sharing the environment with another is not silently run with the other's code and conf/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.tools import checkout
from tests.conftest import ROOT, module_env

PYPROJECT = '[project]\nname = "label-smoothing-mixup"\n'
SCRIPTS = {"lsmix-train": ("train", "src.train", "cli"),
           "lsmix-analyse": ("analyse", "analysis.__main__", "main"),
           "lsmix-bench": ("bench", "src.tools.bench", "cli"),
           "lsmix-eval": ("evaluate", "src.eval", "main"),
           "lsmix-sync": ("sync", "src.tools.wandb_sync", "main")}


def _script(function: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A console script as pip writes it, with this checkout as the installed one: the
    current directory is not on its path (a script's first path entry is its own folder)."""
    code = (f"import sys; sys.path.pop(0); from src.tools.checkout import {function}; "
            f"sys.exit({function}())")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=module_env(),
                          capture_output=True, text=True, timeout=300)


def _fake_checkout(root: Path, module_code: str) -> Path:
    """A checkout of this project whose src.train only says where it was imported from."""
    (root / "src").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "src" / "__init__.py").write_text("")
    (root / "src" / "train.py").write_text(module_code)
    return root


def test_every_console_script_goes_through_the_checkout_launcher():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^(lsmix-\w+) = "src\.tools\.checkout:(\w+)"$', section, re.M))
    assert scripts == {name: f for name, (f, _, _) in SCRIPTS.items()}
    for function, module, entry in SCRIPTS.values():
        assert callable(getattr(checkout, function))
        assert checkout.has_module(ROOT, module) and entry in (
            ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text())


def test_checkout_of_finds_the_root_from_a_subfolder(tmp_path):
    root = _fake_checkout(tmp_path / "clone", "")
    (root / "outputs" / "x").mkdir(parents=True)
    assert checkout.checkout_of(root / "outputs" / "x") == root.resolve()
    assert checkout.checkout_of(ROOT / "src" / "tools") == ROOT
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert checkout.checkout_of(tmp_path / "other") is None


def test_a_script_started_in_another_checkout_runs_that_checkouts_code(tmp_path):
    code = ("import os, sys\ndef cli():\n    print('RAN', __file__)\n"
            "    print('PYTHONPATH', os.environ['PYTHONPATH'].split(os.pathsep)[0])\n"
            "    print('ARGS', sys.argv[1:])\n    return 0\n")
    root = _fake_checkout(tmp_path / "clone", code)
    (root / "sub").mkdir()
    done = _script("train", root / "sub", "a=1")
    assert done.returncode == 0, done.stderr
    assert f"RAN {root.resolve() / 'src' / 'train.py'}" in done.stdout
    assert f"PYTHONPATH {root.resolve()}" in done.stdout  # its subprocesses import it too
    assert "ARGS ['a=1']" in done.stdout
    [line] = done.stderr.splitlines()
    assert str(root.resolve()) in line and str(ROOT) in line and "running the checkout" in line


def test_shell_completion_is_not_interrupted_by_the_note(tmp_path):
    root = _fake_checkout(tmp_path / "clone", "def cli():\n    return 0\n")
    done = _script("train", root, "-sc", "query=bash")
    assert done.returncode == 0 and done.stderr == ""


def test_a_checkout_without_the_module_runs_the_installed_one_and_says_so(tmp_path):
    root = _fake_checkout(tmp_path / "old_clone", "")  # no src/tools/wandb_sync.py
    done = _script("sync", root, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert f"{root.resolve()}, has no src.tools.wandb_sync" in done.stderr
    assert str(ROOT) in done.stderr


def test_outside_any_checkout_the_installed_code_runs_silently(tmp_path):
    done = _script("sync", tmp_path, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
    assert "checkout" not in done.stderr


@pytest.mark.slow
def test_a_clones_own_conf_local_is_read(tmp_path):
    """The reported friction: lsmix-train in a second clone ignored that clone's conf/local."""
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(ROOT / "pyproject.toml", clone)
    for folder in ("src", "conf", "analysis", "hydra_plugins"):
        shutil.copytree(ROOT / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "conf" / "local" / "default.yaml").write_text(  # this clone's machine settings
        "# @package _global_\ntask_name: from_the_clone\n")
    done = _script("train", clone, "--cfg", "job")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "task_name: from_the_clone" in done.stdout
    assert "running the checkout here" in done.stderr
