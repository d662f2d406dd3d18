"""Turn finished runs into ε × α tables, plots and a report: `python -m analysis PATH...`."""

from analysis.errors import AnalysisError
from analysis.load import Runs, load_runs
from analysis.pipeline import analyse

__all__ = ["AnalysisError", "Runs", "analyse", "load_runs"]
