"""Check a sweep's overrides up front once per distinct value, not once per job.

Before launching, Hydra composes every job of a sweep once to catch a bad override early
(`Sweeper.validate_batch_is_legal`), and the launcher composes it again to run it: two
compositions a job, about 0.1 s each on a 2-core CPU. A 210-job study spent 24 s in the first
pass alone. A grid's jobs are combinations of a few values per axis, and a bad override is bad
in every combination it appears in, so composing one job per distinct override (each value
with the first job's other values) catches the same errors, before any job starts, with
sum(values per axis) compositions instead of prod(values per axis).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra.errors import ConfigCompositionException
from hydra.plugins.sweeper import Sweeper


def validate_distinct_overrides(self: Sweeper, batch: Sequence[Sequence[str]]) -> None:
    """Compose the first job, then one job per override value not seen yet."""
    loader = (self.hydra_context.config_loader
              if getattr(self, "hydra_context", None) is not None else self.config_loader)
    seen: set[str] = set()
    first = list(batch[0]) if batch else []
    for overrides in batch:
        new = [o for o in overrides if o not in seen]
        if not new:
            continue
        # The first job's overrides with this job's new values in place of theirs.
        keys = {o.split("=", 1)[0] for o in new}
        trial = [o for o in first if o.split("=", 1)[0] not in keys] + new
        try:
            loader.load_sweep_config(master_config=self.config, sweep_overrides=trial)
        except ConfigCompositionException as err:  # one paragraph and status 2, as a bad value
            message = " ".join(" ".join(str(x).split()) for x in (err, err.__cause__) if x)
            print(f"Configuration error: {message}. Nothing was trained.", file=sys.stderr)
            sys.exit(2)
        seen.update(overrides)


def install() -> None:
    """Make every sweeper of this process validate distinct overrides (see the docstring)."""
    Sweeper.validate_batch_is_legal = validate_distinct_overrides  # type: ignore[method-assign]
