"""Progress of one run: a live bar per epoch on a terminal, one log line per evaluated epoch.

The training loop calls `step()` after every step, so it only adds to a counter: it never
reads a value from the device (which would synchronise a GPU) and formats nothing. What is
shown comes from that count, the wall clock and the row of the evaluated epoch.

The log line goes through `logging`, so Hydra writes it to the job's `train.log` whatever the
console is; on a terminal the epoch's bar is cleared first, leaving one line per epoch above
the next bar. Under a parallel launcher every line starts with the job's id, and the bar is
off unless asked for (several processes drawing bars on one terminal garble each other).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """H:MM:SS, rounded to the second."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def epoch_line(row: Mapping[str, Any], epochs: int, epoch_s: float, run_s: float,
               eta_s: float, desc: str = "", job: str | None = None) -> str:
    """The log line of one evaluated epoch: its figures, then the epoch's seconds and the time
    left (`eta_s`), or after the last epoch the run's time (`run_s`)."""
    parts = [f"[job {job}]" if job is not None else "", desc,
             f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train_acc {row['train_acc']:.4f}"]
    if row.get("val_acc") is not None:
        parts.append(f"val_acc {row['val_acc']:.4f}")
    parts += [f"test_acc {row['test_acc']:.4f}", f"{row['images_per_s']:,.0f} img/s"]
    if int(row["epoch"]) >= epochs:
        parts.append(f"done in {format_duration(run_s)}")
    else:
        parts.append(f"{epoch_s:.1f} s/epoch, ETA {format_duration(eta_s)}")
    return " ".join(p for p in parts if p)


class _EpochBar(tqdm):
    """tqdm's bar with images/s beside the steps (tqdm's own rate is in steps/s)."""

    def __init__(self, *args: Any, images_per_step: int = 0, **kwargs: Any) -> None:
        self.images_per_step = images_per_step  # set first: tqdm draws during __init__
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:  # tqdm's documented hook for extra fields
        d = super().format_dict
        rate = d.get("rate") or (d["n"] / d["elapsed"] if d["elapsed"] else 0.0)
        d["speed"] = (f"{rate * self.images_per_step:,.0f} img/s" if self.images_per_step
                      else f"{rate:.1f} steps/s")
        return d


# tqdm fields, and the bar's own speed; without a known length: no bar and no ETA.
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
              "[{elapsed}<{remaining}, {speed}]")
COUNTER_FORMAT = "{desc}: {n_fmt} steps [{elapsed}, {speed}]"


class Progress:
    """Progress of one run (see the module's docstring).

    mode: "auto" (a bar on a terminal, and not under a parallel launcher), True or False (the
    bar); the log lines are written in every mode. steps_per_epoch: the bar's length (0:
    unknown). job: the job's id under a parallel launcher, else None. batch_size: images per
    step, for the bar's images/s (0: steps/s). clock: seconds, for the ETA.
    """

    def __init__(self, mode: bool | str, epochs: int, steps_per_epoch: int = 0, desc: str = "",
                 job: str | None = None, batch_size: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode == "auto":
            self.live = job is None and sys.stderr.isatty()
        else:
            self.live = bool(mode)
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)
        self.desc, self.job, self.batch_size = desc, job, int(batch_size)
        self.clock = clock
        self.steps = 0  # steps of the current epoch
        self._bar: tqdm | None = None
        self._created = clock()
        self._run_start: float | None = None  # first epoch started in this process
        self._first_epoch = 1
        self._epoch_start: float | None = None

    def start_epoch(self, epoch: int) -> None:
        """An epoch begins (a resumed run starts at its next epoch)."""
        now = self.clock()
        if self._run_start is None:
            self._run_start, self._first_epoch = now, int(epoch)
        self._epoch_start, self.steps = now, 0
        self._close_bar()  # an epoch without evaluation ends without end_epoch
        if self.live:
            label = f"[job {self.job}] {self.desc}" if self.job is not None else self.desc
            self._bar = _EpochBar(
                total=self.steps_per_epoch or None, leave=False, dynamic_ncols=True,
                desc=f"{label} epoch {epoch}/{self.epochs}".strip(), file=sys.stderr,
                bar_format=BAR_FORMAT if self.steps_per_epoch else COUNTER_FORMAT,
                images_per_step=self.batch_size)

    def step(self, n: int = 1) -> None:
        """`n` training steps done."""
        self.steps += n
        if self._bar is not None:
            self._bar.update(n)

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        """The epoch was evaluated: clear its bar and log its line. `row` holds epoch,
        train_loss, train_acc, test_acc, images_per_s and, with a validation split, val_acc."""
        now = self.clock()
        self._close_bar()
        if self._run_start is None:  # no start_epoch: time from this object's creation on
            self._run_start, self._first_epoch = self._created, int(row["epoch"])
        epoch = int(row["epoch"])
        run_s = now - self._run_start
        per_epoch = run_s / max(epoch - self._first_epoch + 1, 1)
        line = epoch_line(row, self.epochs, now - (self._epoch_start or self._run_start), run_s,
                          per_epoch * max(self.epochs - epoch, 0), self.desc, self.job)
        log.info(line)

    def close(self) -> None:
        """Clear a bar still open (a run that stopped inside an epoch)."""
        self._close_bar()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
