"""The console scripts (lsmix-train, lsmix-analyse, lsmix-bench, lsmix-eval, lsmix-sync): each
runs the code and conf/ of the checkout it is started from.

`make install` installs the project editable into a virtualenv that the clones on a machine
share (its folder is named by the requirements' hash), so a console script imports the code of
the checkout that last ran `make install`. Started inside another checkout, it would run that
other code and read that other conf/ (conf/local/ included) without a word. So a script first
looks for a checkout of this project at or above the current directory; when it finds one that
is not its own, it says so in one line on stderr and imports the module from that checkout
instead: the checkout goes first on sys.path and on PYTHONPATH (so that subprocesses, joblib
or submitit workers, import the same code), and the modules already imported from the
installed checkout are dropped. Outside any checkout the installed code runs, silently;
inside a checkout that lacks the module (an older one), the installed code runs, with a line
that says so. Standard library only: it runs before anything else of the suite is imported.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

# The checkout this file belongs to: the one installed in the environment.
INSTALLED = Path(__file__).resolve().parents[2]
# The top-level packages of a checkout (pyproject.toml's [tool.setuptools.packages.find]).
PACKAGES = ("src", "analysis", "hydra_plugins")
_PROJECT = re.compile(r'^name\s*=\s*"label-smoothing-mixup"\s*$', re.MULTILINE)
# Hydra's shell completion runs the script at every TAB: its stderr would land in the prompt.
_COMPLETION_FLAGS = ("-sc", "--shell-completion")


def is_checkout(folder: Path) -> bool:
    """Whether `folder` is the root of a checkout of this project (its pyproject.toml)."""
    try:
        return _PROJECT.search((folder / "pyproject.toml").read_text()) is not None
    except (OSError, UnicodeDecodeError):
        return False


def checkout_of(folder: Path) -> Path | None:
    """The checkout of this project that holds `folder` (it or a folder above), or None."""
    folder = folder.resolve()
    return next((d for d in (folder, *folder.parents) if is_checkout(d)), None)


def has_module(root: Path, module: str) -> bool:
    """Whether the checkout at `root` holds `module` (a module file or a package)."""
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def use_checkout(root: Path) -> None:
    """Import the suite's packages from `root` from now on, in this process and its children."""
    for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    importlib.invalidate_caches()


def choose(module: str, cwd: Path) -> tuple[Path, str | None]:
    """The checkout to run `module` from, for a script started in `cwd`, and the line that
    says so when it is not the installed one (None when nothing needs saying)."""
    here = checkout_of(cwd)
    if here is None or here == INSTALLED:
        return INSTALLED, None
    if not has_module(here, module):
        return INSTALLED, (f"the checkout here, {here}, has no {module}: running the one "
                           f"installed in this environment, {INSTALLED}")
    return here, (f"running the checkout here, {here}, not the one installed in this "
                  f"environment, {INSTALLED}")


def run(module: str, function: str) -> Any:
    """Call `module.function()` from the checkout `choose` picks for the current directory."""
    try:
        cwd = Path.cwd()
    except OSError:  # a deleted working directory: no checkout of its own
        root, note = INSTALLED, None
    else:
        root, note = choose(module, cwd)
    if note and not set(_COMPLETION_FLAGS) & set(sys.argv[1:]):
        print(f"{Path(sys.argv[0]).name}: {note}", file=sys.stderr, flush=True)
    if root != INSTALLED:
        use_checkout(root)
    return getattr(importlib.import_module(module), function)()


# One function per console script (pyproject.toml [project.scripts]).
def train() -> Any:
    return run("src.train", "cli")


def analyse() -> Any:
    return run("analysis.__main__", "main")


def bench() -> Any:
    return run("src.tools.bench", "cli")


def evaluate() -> Any:
    return run("src.eval", "main")


def sync() -> Any:
    return run("src.tools.wandb_sync", "main")
