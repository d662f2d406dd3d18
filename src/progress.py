"""A per-run progress line: live on a terminal, one log line per epoch elsewhere."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("src.train")


class Progress:
    """Shows epoch, loss, accuracy and images/s; quiet in non-interactive logs."""

    def __init__(self, mode: Any, epochs: int) -> None:
        self.live = sys.stderr.isatty() if mode == "auto" else bool(mode)
        self.epochs = epochs

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Report one evaluated epoch."""
        text = (f"epoch {row['epoch']}/{self.epochs} loss {row['train_loss']:.4f} "
                f"train {row['train_acc']:.3f} test {row['test_acc']:.4f} "
                f"{row['images_per_s']:.0f} img/s")
        if self.live:
            sys.stderr.write("\r" + text + " " * 4)
            sys.stderr.flush()
            if row["epoch"] == self.epochs:
                sys.stderr.write("\n")
        # Without a terminal, log about five lines a run (and the last epoch), not one per epoch.
        stride = max(self.epochs // 5, 1)
        quiet = self.live or (row["epoch"] % stride and row["epoch"] != self.epochs)
        log.log(logging.DEBUG if quiet else logging.INFO, text)
