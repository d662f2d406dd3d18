"""The error type of the analysis: bad input paths, corrupt studies, conflicting runs."""

from __future__ import annotations


class AnalysisError(Exception):
    """Input the analysis cannot use; the message names the path(s) at fault."""
