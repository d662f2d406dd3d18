"""Check a sweep's overrides up front once per distinct value, not once per job, and before
the sweep writes anything.

Before launching, Hydra composes every job of a sweep once to catch a bad override early
(`Sweeper.validate_batch_is_legal`), and the launcher composes it again to run it: two
compositions a job, about 0.1 s each on a 2-core CPU. A 210-job study spent 24 s in the first
pass alone. A grid's jobs are combinations of a few values per axis, and a bad override is bad
in every combination it appears in, so composing one job per distinct override (each value
with the first job's other values) catches the same errors, before any job starts, with
sum(values per axis) compositions instead of prod(values per axis).

Hydra's basic sweeper writes the sweep folder's multirun.yaml before it validates its first
batch; here every batch is validated first, so that a refused sweep leaves nothing behind.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.plugins.sweeper import Sweeper

from src.config.entry import missing_option, refuse
from src.sweep.compose import plain_value

# Hydra's plugin scan executes its core plugins' modules again, so the basic sweeper is found
# by name on each sweeper made, not patched on a class imported here.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_INSTANTIATE = Plugins.instantiate_sweeper  # Hydra's own
_VALIDATED = "_lsmix_validated"  # set on a sweeper whose jobs were all validated up front


def validate_distinct_overrides(self: Sweeper, batch: Sequence[Sequence[str]]) -> None:
    """Compose the first job, then one job per override value not seen yet."""
    if getattr(self, _VALIDATED, False):
        return
    loader = (self.hydra_context.config_loader
              if getattr(self, "hydra_context", None) is not None else self.config_loader)
    seen: set[str] = set()
    first = list(batch[0]) if batch else []
    parser = OverridesParser.create()
    first_keys = {o.key_or_group for o in parser.parse_overrides(first)}
    for overrides in batch:
        new = [o for o in overrides if o not in seen]
        if not new:
            continue
        is_first = not seen
        seen.update(overrides)
        # Another value of a replicate or batchable key the first job sets composes as the
        # first job does, the value put in (src.sweep.compose): nothing to check.
        if not is_first and all(plain_value(o) and o.key_or_group in first_keys
                                for o in parser.parse_overrides(new)):
            continue
        # The first job's overrides with this job's new values in place of theirs.
        keys = {o.split("=", 1)[0] for o in new}
        trial = [o for o in first if o.split("=", 1)[0] not in keys] + new
        try:
            loader.load_sweep_config(master_config=self.config, sweep_overrides=trial)
        except MissingConfigException as err:  # one paragraph and status 2, as a bad value
            refuse(missing_option(err))
        except ConfigCompositionException as err:
            refuse(err)


def validate_then_sweep(self: Any, sweep: Callable[[list[str]], Any],
                        arguments: list[str]) -> Any:
    """Validate the jobs of every batch of Hydra's basic sweeper, then `sweep` as it does
    (which writes the sweep folder's multirun.yaml first, then validates each batch)."""
    params = self._parse_config() + list(arguments)
    parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
    jobs = [job for batch in self.split_arguments(parser.parse_overrides(params), None)
            for job in batch]
    validate_distinct_overrides(self, jobs)
    setattr(self, _VALIDATED, True)
    plan = self.config.get("plan")
    if plan is not False:  # true: show what would run, write nothing; before: then run it
        from src.sweep.plan import BEFORE, check_plan, describe

        check_plan(plan)
        print(describe(self.hydra_context.config_loader, self.config,
                       parser.parse_overrides(params), jobs, then_train=plan == BEFORE),
              flush=True)
        if plan is True:
            sys.exit(0)
    return sweep(arguments)


def instantiate_sweeper(self: Plugins, **kwargs: Any) -> Sweeper:
    """Hydra's sweeper, set up; the basic one validates its whole sweep before writing."""
    sweeper = _INSTANTIATE(self, **kwargs)
    kind = type(sweeper)
    if f"{kind.__module__}.{kind.__qualname__}" == BASIC_SWEEPER:
        sweeper.sweep = functools.partial(validate_then_sweep, sweeper, sweeper.sweep)
    return sweeper


def install() -> None:
    """Make every sweeper of this process validate distinct overrides (see the docstring), and
    Hydra's basic sweeper validate all of them before it writes anything."""
    Sweeper.validate_batch_is_legal = validate_distinct_overrides  # type: ignore[method-assign]
    Plugins.instantiate_sweeper = instantiate_sweeper  # type: ignore[method-assign]
