"""The one refusal of bad input, and the checks an entry point runs on its command line before
Hydra does anything.

Bad input is refused in one paragraph that names the key, the value and what is allowed
(src.errors.ConfigError), with exit status 2, before anything is written. Hydra creates the run
folder (a sweep's folder and its multirun.yaml) before the app's code runs, so what would make
it fail there (a misspelt key, a missing option, a config file that is not YAML, a folder that
cannot be written) is found here first, on the config the command composes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from hydra.errors import ConfigCompositionException, MissingConfigException

from src.errors import ConfigError, did_you_mean

EXIT_BAD_INPUT = 2
SWEEP_FLAGS = ("-m", "--multirun")
# What `refuse` takes: the suite's own error, or a composition error of Hydra's in its words.
REFUSED = (ConfigError, ConfigCompositionException)


def one_paragraph(err: BaseException) -> str:
    """An exception's message (and its cause's) on one line."""
    parts = [str(err)] + ([str(err.__cause__)] if err.__cause__ else [])
    return " ".join(" ".join(p.split()) for p in parts if p).rstrip(".")


def refusal(err: BaseException, action: str = "trained") -> str:
    """The text of a refusal: `Configuration error: <what>. Nothing was <action>.`"""
    return f"Configuration error: {one_paragraph(err)}. Nothing was {action}."


def refuse(err: BaseException, action: str = "trained") -> NoReturn:
    """Print the refusal on stderr and exit with status 2."""
    print(refusal(err, action), file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def missing_option(err: MissingConfigException) -> BaseException:
    """`model=nosuch`: the group, the option and the options there are, not Hydra's search
    path. Any other missing config stays Hydra's error."""
    file, options = err.missing_cfg_file, err.options
    if not file or "/" not in file or options is None:
        return err
    group, name = file.rsplit("/", 1)
    return ConfigError(group, name, f"one of {sorted(options)}",
                       hint=did_you_mean(name, options) or f"no {file}.yaml in the config tree")


def compose_command_line(config_dir: str, config_name: str,
                         argv: list[str]) -> tuple[Any, bool] | None:
    """The config of the command's (first) job, composed as Hydra will compose it, with its
    `hydra` node, and whether the command is a sweep (-m, or hydra.mode=MULTIRUN as a study
    sets it). None where a flag of Hydra's own (--help, --cfg, -cd) decides what runs, or the
    overrides are for Hydra to report. Raises one of REFUSED for what would make Hydra fail."""
    flag = any(a in SWEEP_FLAGS for a in argv)
    overrides = [a for a in argv if a not in SWEEP_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return None
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.types import RunMode

    first = first_job(overrides)
    if first is None:
        return None
    swept = any(a not in first for a in overrides)
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=first, return_hydra_config=True)
            except MissingConfigException as err:
                raise missing_option(err) from None
            except ConfigCompositionException as err:
                raise misspelt_key(err, first, lambda o: compose(
                    config_name, overrides=o, return_hydra_config=True)) from None
    except yaml.YAMLError as err:
        raise not_yaml(err) from None
    except HydraException as err:
        if isinstance(err, REFUSED):
            raise
        return None  # anything else: Hydra reports it as it runs
    multirun = flag or cfg.hydra.get("mode") == RunMode.MULTIRUN
    if swept and not multirun:
        return None  # a sweep of a single run: Hydra's message
    return cfg, multirun


def first_job(overrides: list[str]) -> list[str] | None:
    """The overrides of a sweep's first job (each swept key at its first value); a sweep's
    other values are checked as the sweep starts (src.sweep.validation). None where Hydra
    reports the overrides itself (a parse error, a glob of options)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                if o.is_sweep_override() else text for text, o in zip(overrides, parsed)]
    except Exception:  # noqa: BLE001 (Hydra's own message, as it parses them again)
        return None


def misspelt_key(err: ConfigCompositionException, overrides: list[str],
                 compose: Any) -> BaseException:
    """`trainer.lrr=0.1`: the key, its value and the keys there are, with the closest one,
    from the config composed without it. Any other composition error stays Hydra's."""
    full_key = getattr(err.__cause__, "full_key", None)
    mine = [o for o in overrides if o.split("=", 1)[0] == full_key]  # not +key: it exists
    if not full_key or not mine:
        return err
    from omegaconf import OmegaConf

    parent, _, name = str(full_key).rpartition(".")
    try:
        cfg = compose([o for o in overrides if o not in mine])
    except Exception:  # noqa: BLE001 (no list of keys to offer: Hydra's message)
        return err
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node):
        return err
    known = sorted(str(k) for k in node if parent or k != "hydra")
    return ConfigError(str(full_key), mine[0].split("=", 1)[1],
                       f"a known key of {parent or 'the root config'}: {known}",
                       hint=did_you_mean(name, known))


def not_yaml(err: Any) -> ConfigError:
    """A config file that YAML cannot read: the file, its line and what YAML says."""
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
    if mark is None:
        return ConfigError("config file", "?", "valid YAML", hint=one_paragraph(err))
    try:
        line = Path(mark.name).read_text().splitlines()[mark.line].strip()
    except (OSError, IndexError):
        line = ""
    return ConfigError(f"{mark.name} line {mark.line + 1}", line, "valid YAML",
                       hint=one_paragraph(err))


def unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written in `folder`, found by trying: create it (and the folders
    above it that are missing) and a temporary file in it, then remove them all. Permission
    bits do not tell: root writes where they forbid it, and nobody writes in /proc."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        blocking = next((p for p in (folder, *folder.parents)
                         if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return f"{blocking} is a file, not a folder"
        return f"{err.filename or folder} cannot be written: {err.strerror or type(err).__name__}"
    finally:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                break
    return None


def check_command_line(conf_dir: str, argv: list[str]) -> None:
    """Refuse, before Hydra composes the run (or sweep) and creates its folder, what would fail
    there or leave a stray folder: a misspelt key or a missing option, a config file that is
    not YAML (conf/local/default.yaml), a task_name that is a path, a folder that cannot be
    written. A sweep's other values are checked as it starts (src.sweep.validation); command
    line flags other than -m are Hydra's."""
    try:
        composed = compose_command_line(conf_dir, "config", argv)
        if composed is not None:
            check_folders(*composed)
    except REFUSED as err:
        refuse(err)


def check_folders(cfg: Any, multirun: bool) -> None:
    """The folders the command writes can be created and written: the run's (or the
    sweep's), named by paths.output_dir where it lies under it, and W&B's logger.dir."""
    from omegaconf import OmegaConf

    from src.config.validate import NAME

    NAME("task_name", cfg.task_name)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(str(OmegaConf.select(cfg, key)))
    output = Path(str(cfg.paths.output_dir))
    if output.resolve() in (folder.resolve(), *folder.resolve().parents):
        key = "paths.output_dir"
    folders = {key: folder}
    if cfg.logger.get("name") == "wandb" and cfg.logger.get("dir"):
        folders["logger.dir"] = Path(str(cfg.logger.dir))
    for key, folder in folders.items():
        problem = unwritable(folder)
        if problem:
            raise ConfigError(key, str(OmegaConf.select(cfg, key)),
                              "a folder this process can create and write files in",
                              hint=problem)
