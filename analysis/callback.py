"""The Hydra callback of the studies: analyse a study as soon as its sweep ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class AnalyseSweep(Callback):
    """After a multirun, run the analysis over its sweep folder and print the tables."""

    def __init__(self, enabled: bool = True, quiet: bool = False) -> None:
        self.enabled, self.quiet = enabled, quiet

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from analysis import AnalysisError, analyse

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            out = analyse([sweep_dir], quiet=self.quiet)
        except AnalysisError as err:  # e.g. every job was skipped for bad input
            log.warning("no analysis of %s: %s", sweep_dir, err)
            return
        print(f"\nAnalysis written to {out} (report: {out / 'report.md'})")
