"""Turn finished runs into ε × α tables, plots and a report: `python -m analysis PATH...`.

Its names are imported on first use (PEP 562): `python -m analysis` imports this package
before its main function runs, and pandas and matplotlib take seconds, during which the
command's signal policy must already stand (analysis.__main__)."""

from __future__ import annotations

import importlib
from typing import Any

from analysis.errors import AnalysisError

_LAZY = {"Runs": "analysis.load", "load_runs": "analysis.load", "analyse": "analysis.pipeline"}

__all__ = ["AnalysisError", "Runs", "analyse", "load_runs"]


def __getattr__(name: str) -> Any:
    """The package's public names from their modules, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
