"""Imports flow one way, down the pipeline: config and data below training, training below
the run lifecycle, the run below the entry points and tools, and the analysis on top (it
reads run records, never the other way round). Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, ...]] = [
    ("src.errors", "src.files", "src.config.options", "src.config"),
    ("src.data.arrays", "src.noise", "src.models", "src.data.crop_flip", "src.augmentation",
     "src.run.progress", "src.run.loggers"),
    ("src.data.tensors", "src.data", "src.config.validate", "src.config.entry"),
    ("src.training",),
    ("src.run",),
    ("src.train", "src.tools", "src.sweep", "src.eval"),
    ("analysis",),
]


def layer_of(module: str) -> int:
    """The layer of the most specific prefix that names `module`."""
    best, level = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    assert level is not None, f"{module} is in no layer: add it to LAYERS"
    return level


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The suite's modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            found |= {f"{base}.{a.name}" if base in ("src", "analysis") else base
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.split(".")[0] in ("src", "analysis")}


def sources() -> dict[str, Path]:
    files = [p for d in ("src", "analysis") for p in (ROOT / d).rglob("*.py")]
    return {module_name(p): p for p in files}


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for name, path in sources().items():
        for dep in imports(path):
            if layer_of(dep) > layer_of(name):
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle():
    mods = sources()
    graph = {name: {d for d in imports(p) if d in mods or d.rsplit(".", 1)[0] in mods}
             for name, p in mods.items()}
    graph = {n: {d if d in mods else d.rsplit(".", 1)[0] for d in deps} - {n}
             for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [n, d]))
            if d not in state:
                visit(d, trail + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_the_entry_point_imports_no_torch():
    """A bad config is refused, and a sweep's jobs registered, before the ~1.5 s torch import."""
    import subprocess
    import sys

    code = "import sys, src.train; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
