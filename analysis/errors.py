"""The error types of the analysis: bad input (paths, corrupt studies, conflicting runs) and a
signal that stopped it."""

from __future__ import annotations

import signal

from src.run.signals import Stopped


class AnalysisError(Exception):
    """Input the analysis cannot use; the message names the path(s) at fault."""


class Interrupted(Stopped):
    """A signal stopped the analysis; the message says what its output folder holds. A Stopped
    (src.run.signals), so a study's end-of-sweep analysis stops like the rest of the sweep:
    exit 75 (rerun to resume) or, for Ctrl-C, 130."""

    def __init__(self, stop: Stopped, state: str) -> None:
        super().__init__(stop.signum, stop.previous)
        self.args = (f"analysis interrupted by {signal.Signals(stop.signum).name}: {state}",)
