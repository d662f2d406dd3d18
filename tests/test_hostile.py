"""Bad input and faults a hostile user tries: each is refused before anything is written, with
one paragraph that names the key, the value and what is allowed, or handled without loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from src.config.validate import validate
from src.errors import ConfigError
from src.files import read_json
from src.run.lock import RunBusy, run_folder_lock
from src.run.signals import SIGNALS
from src.train import train
from tests.conftest import ROOT, TINY, make_cfg, module_env, run_module

QUICK = TINY + ["trainer.epochs=1"]


def archive(path: Path, **arrays) -> Path:
    """A small valid archive (digits-like 8x8 grey), with any split replaced by `arrays`."""
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 256, (120, 8, 8), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 120), "x_test": rng.integers(0, 256, (40, 8, 8),
                                                                       dtype=np.uint8),
            "y_test": rng.integers(0, 10, 40)}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def bad_archives(tmp: Path) -> dict[str, Path]:
    """One file per way an archive can be wrong."""
    out = {"length mismatch": archive(tmp / "len.npz", y_train=np.zeros(7, np.int64)),
           "empty split": archive(tmp / "empty.npz", x_test=np.zeros((0, 8, 8), np.uint8),
                                  y_test=np.zeros(0, np.int64)),
           "2-D images": archive(tmp / "flat.npz", x_train=np.zeros((120, 64), np.uint8)),
           "float labels": archive(tmp / "float.npz", y_train=np.full(120, 0.5)),
           "float images": archive(tmp / "fimg.npz", x_train=np.zeros((120, 8, 8))),
           "label out of range": archive(tmp / "range.npz", y_test=np.full(40, 10)),
           "negative label": archive(tmp / "neg.npz", y_test=np.full(40, -1)),
           "missing split": archive(tmp / "miss.npz", y_test=None),
           "wrong image size": archive(tmp / "size.npz",
                                       x_train=np.zeros((120, 9, 9), np.uint8))}
    obj = tmp / "object.npz"
    np.savez(obj, x_train=np.array([object()] * 3, dtype=object), y_train=np.zeros(3),
             x_test=np.zeros(3), y_test=np.zeros(3))
    out["object arrays"] = obj
    (tmp / "text.npz").write_text("x_train,y_train\n1,2\n")
    out["text file"] = tmp / "text.npz"
    (tmp / "zero.npz").write_bytes(b"")
    out["0-byte file"] = tmp / "zero.npz"
    good = archive(tmp / "good.npz").read_bytes()
    (tmp / "trunc.npz").write_bytes(good[: len(good) // 2])
    out["truncated"] = tmp / "trunc.npz"
    np.save(tmp / "single.npy", np.zeros((3, 8, 8), np.uint8))
    out[".npy"] = tmp / "single.npy"
    with zipfile.ZipFile(tmp / "zip.npz", "w") as z:
        z.writestr("x_train.npy", b"not an array")
    out["zip of junk"] = tmp / "zip.npz"
    return out


def npz_cfg(path: Path, run_dir: Path, extra: list[str] = ()):
    return make_cfg(QUICK + ["dataset=npz", f"dataset.npz={path}", "dataset.image_shape=[1,8,8]",
                             "dataset.num_classes=10", "dataset.mean=[0.5]",
                             "dataset.std=[0.25]", *extra], run_dir=run_dir)


@pytest.mark.parametrize("case", ["length mismatch", "empty split", "2-D images",
                                  "float labels", "float images", "label out of range",
                                  "negative label", "missing split", "wrong image size",
                                  "object arrays", "text file", "0-byte file", "truncated",
                                  ".npy", "zip of junk"])
def test_a_bad_archive_is_refused_before_anything_is_written(tmp_path, case):
    path = bad_archives(tmp_path)[case]
    run_dir = tmp_path / "outputs" / "run"
    with pytest.raises(ConfigError) as info:
        train(npz_cfg(path, run_dir))
    message = str(info.value)
    assert "\n" not in message and str(path) in message or "dataset." in message
    assert message.startswith("dataset.")
    assert not run_dir.exists()


def test_a_bad_archive_from_the_command_line_exits_2_with_one_paragraph(tmp_path):
    path = bad_archives(tmp_path)["float labels"]
    out = run_module(["dataset=npz", f"dataset.npz={path}", "dataset.image_shape=[1,8,8]",
                      "dataset.mean=[0.5]", "dataset.std=[0.25]", *QUICK], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "integer class labels" in out.stderr
    assert not any((tmp_path / "outputs").rglob("results.json"))


def test_a_changed_archive_behind_an_unchanged_config_is_never_skipped(tmp_path):
    data = archive(tmp_path / "data.npz")
    run_dir = tmp_path / "run"
    first = train(npz_cfg(data, run_dir))
    assert first["inputs"]["dataset.npz"]["hash"]
    archive(data, y_train=np.roll(np.load(data)["y_train"], 1))  # same shapes, new labels
    with pytest.raises(ConfigError, match="content of dataset.npz changed"):
        train(npz_cfg(data, run_dir))
    assert read_json(run_dir / "results.json")["finished_at"] == first["finished_at"]
    again = train(npz_cfg(data, run_dir, ["skip_completed=false"]))
    assert again["inputs"]["dataset.npz"]["hash"] != first["inputs"]["dataset.npz"]["hash"]
    assert again["config_fingerprint"] != first["config_fingerprint"]


def test_a_moved_archive_is_the_same_run(tmp_path):
    data = archive(tmp_path / "data.npz")
    first = train(npz_cfg(data, tmp_path / "run"))
    moved = data.rename(tmp_path / "elsewhere.npz")
    again = train(npz_cfg(moved, tmp_path / "run"))
    assert again["finished_at"] == first["finished_at"]  # skipped: same content


@pytest.mark.parametrize(("override", "key"), [
    ("augmentation.mixup_alpha=inf", "augmentation.mixup_alpha"),
    ("dataset.std=[1e-45]", "dataset.std"),
    ("dataset.std=[inf]", "dataset.std"),
    ("trainer.warmup_epochs=inf", "trainer.warmup_epochs"),
    ("trainer.lr=nan", "trainer.lr"),
    ("+lr=0.01", "lr"),
    ("task_name=../x", "task_name"),
    ("task_name=a/b", "task_name"),
    ("logger=wandb logger.project=my/project", "logger.project"),
    ("noise=symmetric noise.rate=0.95", "noise.rate"),
    ("noise=asymmetric dataset=fashion_mnist", "noise"),
    ("trainer.parallel_seeds=[1,1]", "trainer.parallel_seeds"),
    ("model=lstm trainer.parallel_seeds=[0,1]", "trainer.parallel_seeds"),
    ("trainer.batch_size=1", "trainer.batch_size"),
    ("dataset.mean=[0.1,0.2]", "dataset.mean"),
    ("trainer.eval_every=0", "trainer.eval_every"),
    ("trainer.momentum=1.5", "trainer.momentum"),
])
def test_values_that_would_poison_a_run_are_refused(tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(override.split(), run_dir=tmp_path))
    assert str(info.value).startswith(key), str(info.value)


def test_a_validation_split_that_leaves_no_batch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dataset.val_fraction"):
        train(make_cfg(QUICK + ["dataset.val_fraction=0.9999"], run_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_a_validation_split_that_holds_no_image_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset.val_fraction=0.001 .* at least 1 image "
                                          r".*: 0 of these 1437"):
        train(make_cfg(QUICK + ["dataset.val_fraction=0.001"], run_dir=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_an_interrupted_run_of_another_config_is_refused_and_kept(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"status": "interrupted", "config_fingerprint": "0" * 16, "epochs_done": 3}
    (run_dir / "results.json").write_text(json.dumps(record))
    (run_dir / "checkpoint.pt").write_bytes(b"state")
    with pytest.raises(ConfigError, match="interrupted run of a different configuration"):
        train(make_cfg(QUICK, run_dir=run_dir))
    assert read_json(run_dir / "results.json") == record
    assert (run_dir / "checkpoint.pt").read_bytes() == b"state"


def test_skip_completed_false_trains_again_even_with_a_kept_checkpoint(tmp_path):
    over = QUICK + ["trainer.keep_checkpoint=true"]
    first = train(make_cfg(over, run_dir=tmp_path))
    assert (tmp_path / "checkpoint.pt").exists()
    again = train(make_cfg(over + ["skip_completed=false"], run_dir=tmp_path))
    assert again["finished_at"] >= first["finished_at"] and again["epochs_done"] == 1
    assert again["train_time_s"] > 0 and again["started_at"] >= first["finished_at"]


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path):
    with run_folder_lock([tmp_path]):  # another job holds the folder
        with pytest.raises(RunBusy, match=f"held by pid {os.getpid()}"):
            train(make_cfg(QUICK, run_dir=tmp_path))
    assert not (tmp_path / "results.json").exists()
    assert train(make_cfg(QUICK, run_dir=tmp_path))["status"] == "completed"  # lock released


def test_a_refused_rerun_does_not_rewrite_hydras_record(tmp_path):
    args = [*QUICK, "hydra.run.dir=run"]
    assert run_module(args, cwd=tmp_path).returncode == 0
    record = tmp_path / "run" / ".hydra" / "overrides.yaml"
    before = record.read_text()
    out = run_module([*args, "trainer.lr=0.01"], cwd=tmp_path)
    assert out.returncode == 2 and "different configuration" in out.stderr
    assert record.read_text() == before


# ------------------------------------------------------------------ signals at every phase


@pytest.fixture
def signals(monkeypatch, tmp_path):
    """Run the entry point in this process; restore the signal handlers afterwards."""
    from src import train as entry
    from src.run import preflight

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preflight, "FAILED_JOBS", [])
    yield entry
    SIGNALS.restore()


def _cli_exit(entry, monkeypatch, args) -> int:
    monkeypatch.setattr(sys, "argv", ["src.train", *args, "hydra/job_logging=disabled"])
    with pytest.raises(SystemExit) as info:
        entry.cli()
    return info.value.code


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130),
                                              (signal.SIGUSR1, 75)])
def test_a_signal_while_loading_data_exits_resumable_without_a_record(
        signals, monkeypatch, tmp_path, signum, code):
    from src.data import arrays

    original = arrays.load_arrays

    def loading(cfg):
        os.kill(os.getpid(), signum)
        return original(cfg)

    monkeypatch.setattr(arrays, "load_arrays", loading)
    assert _cli_exit(signals, monkeypatch, [*QUICK, "hydra.run.dir=run"]) == code
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_signal_between_sweep_jobs_stops_the_sweep_resumable(signals, monkeypatch, tmp_path):
    from src.run import lifecycle

    original = lifecycle.run_job

    def then_signal(*args, **kwargs):
        out = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives after the job, before the next
        return out

    monkeypatch.setattr(lifecycle, "run_job", then_signal)
    code = _cli_exit(signals, monkeypatch, ["-m", *QUICK, "trainer.lr=0.05,0.02",
                                            "hydra.sweep.dir=sweep"])
    assert code == 75
    done = [read_json(p)["status"] for p in (tmp_path / "sweep").rglob("results.json")]
    assert done == ["completed"]  # the first job kept, the second never started


def test_a_signal_in_batched_seeds_checkpoints_and_resumes(signals, monkeypatch, tmp_path):
    from src.training.trainer import Trainer

    original, calls = Trainer.train_epoch, []

    def signalled(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", signalled)
    args = [*TINY, "trainer.epochs=3", "trainer.parallel_seeds=[0,1]",
            "hydra.run.dir='job/seed=0'"]
    assert _cli_exit(signals, monkeypatch, args) == 75
    for seed in (0, 1):
        res = read_json(tmp_path / "job" / f"seed={seed}" / "results.json")
        assert res["status"] == "interrupted" and res["epochs_done"] == 1
    assert (tmp_path / "job" / "seed=0" / "checkpoint.pt").exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    SIGNALS.restore()
    monkeypatch.setattr(sys, "argv", ["src.train", *args, "hydra/job_logging=disabled"])
    signals.cli()
    for seed in (0, 1):
        res = read_json(tmp_path / "job" / f"seed={seed}" / "results.json")
        assert res["status"] == "completed" and res["epochs_done"] == 3


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_any_job_runs(tmp_path):
    out = run_module(["-m", *QUICK, "trainer.lr=0.05,0.02", "model=cnn,nosuchmodel",
                      "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert out.returncode != 0 and "nosuchmodel" in out.stderr
    assert not any((tmp_path / "sweep").rglob("results.json"))


def composed_by_the_sweep_check(batch: list[list[str]]) -> list[list[str]]:
    """The jobs the up-front sweep check composes for `batch` (a loader that records them)."""
    from src.sweep.validation import validate_distinct_overrides

    calls: list[list[str]] = []

    class Loader:
        def load_sweep_config(self, master_config, sweep_overrides):
            calls.append(sweep_overrides)

    class Sweeper:
        hydra_context, config, config_loader = None, None, Loader()

    validate_distinct_overrides(Sweeper(), batch)
    return calls


def test_sweep_validation_composes_once_per_distinct_value():
    batch = [[f"a={a}", f"b={b}", f"seed={s}"] for a in range(3) for b in range(2)
             for s in range(5)]
    calls = composed_by_the_sweep_check(batch)
    assert len(calls) < len(batch) and len(calls) <= 3 + 2 + 5
    tried = {o for call in calls for o in call}
    assert tried == {o for job in batch for o in job}  # every value composed at least once


def test_sweep_validation_fills_in_replicate_and_batchable_values_without_composing():
    """Another seed, alpha or eps of a key the first job sets composes as the first job
    (src.sweep.compose): only the first job and the other keys' values are composed."""
    batch = [[f"augmentation.smoothing={e}", f"noise.rate={r}", f"model={m}",
              f"trainer.seed={s}"]
             for e in (0, 0.1, 0.2) for r in (0, 0.4) for m in ("cnn", "mlp") for s in range(4)]
    calls = composed_by_the_sweep_check(batch)
    assert len(calls) == 3  # the first job, noise.rate=0.4, model=mlp
    assert calls[0] == batch[0]
    assert {o for c in calls[1:] for o in c} >= {"noise.rate=0.4", "model=mlp"}


@pytest.mark.parametrize("args", [["trainer.lrr=0.1"], ["augmentation=nosuch"],
                                  ["-m", "trainer.lrr=0.1,0.2"]])
def test_a_misspelt_key_or_option_exits_2_in_one_paragraph(tmp_path, args):
    out = run_module([*args, *QUICK, "hydra.sweep.dir=sweep", "hydra.run.dir=run"],
                     cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Configuration error:")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "sweep").exists()  # not even Hydra's multirun.yaml


# The entry point as `python -m src.train` runs it, paused at a phase of its start until a
# signal arrives: while it imports its modules, or in the up-front check of its overrides.
_PAUSED_ENTRY = """
import runpy, sys, time

phase = sys.argv.pop(1)


def pause():
    print("paused", flush=True)
    from src.run.signals import SIGNALS

    for _ in range(600):
        if SIGNALS.pending is not None:  # noted, to act on once the imports are done
            return
        time.sleep(0.05)


class PauseAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == "hydra":  # the entry's first import after its signal policy
            sys.meta_path.remove(self)
            pause()
        return None


if phase == "imports":
    sys.meta_path.insert(0, PauseAtImport())
else:
    import hydra

    compose = hydra.compose
    hydra.compose = lambda *args, **kwargs: (pause(), compose(*args, **kwargs))[1]
runpy.run_module("src.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("phase", ["imports", "override check"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_a_signal_at_start_up_exits_with_the_signal_policys_code(tmp_path, phase, signum,
                                                                  code):
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_ENTRY, phase, *QUICK,
                             "hydra.run.dir=run"], cwd=tmp_path, env=module_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "paused"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "rerun to resume" in err
    assert not (tmp_path / "run").exists()


def test_a_local_config_that_is_not_yaml_is_one_paragraph_naming_file_and_line(tmp_path):
    checkout = tmp_path / "checkout"  # a copy: the repository's conf/local stays as it is
    for name in ("src", "conf", "hydra_plugins", "analysis"):
        shutil.copytree(ROOT / name, checkout / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    local = checkout / "conf" / "local" / "default.yaml"
    local.write_text("paths:\n  data_dir: [unclosed\n")
    work = tmp_path / "work"
    work.mkdir()
    out = run_module(QUICK, cwd=work, env_extra={"PYTHONPATH": str(checkout)})
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Configuration error:"), out.stderr[-2000:]
    assert f"{local} line 2='data_dir: [unclosed'" in lines[0] and "valid YAML" in lines[0]
    assert not any(work.iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(("args", "key"), [
    (["paths.output_dir=/proc/x"], "paths.output_dir='/proc/x'"),
    (["paths.output_dir=afile"], "paths.output_dir='afile'"),
    (["-m", "paths.output_dir=afile/sub", "trainer.lr=0.1,0.2"], "paths.output_dir='afile/sub'"),
    (["logger=wandb", "logger.mode=offline", "logger.dir=/proc/x"], "logger.dir='/proc/x'"),
])
def test_an_output_folder_that_takes_no_files_is_refused_before_anything_is_written(
        tmp_path, args, key):
    (tmp_path / "afile").write_text("in the way")
    out = run_module([*args, *QUICK], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Configuration error: {key} is not valid")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_task_name_that_escapes_outputs_leaves_no_folder(tmp_path):
    out = run_module(["task_name=../escaped", *QUICK], cwd=tmp_path)
    assert out.returncode == 2 and "task_name='../escaped'" in out.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("case", "says"), [
    ("negative label", "dataset.npz="),
    ("negative label", "y_test holds the negative label -1"),
    ("text file", "it is a text file, not a numpy archive (it begins 'x_train,y_train')"),
])
def test_a_bad_archives_hint_names_its_actual_problem(tmp_path, case, says):
    with pytest.raises(ConfigError) as info:
        train(npz_cfg(bad_archives(tmp_path)[case], tmp_path / "run"))
    assert says in str(info.value)


def test_human_noise_on_another_dataset_than_cifar10_says_so(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(["noise=human", "noise.file=/nonexistent/CIFAR-10_human.pt"],
                          run_dir=tmp_path))
    assert "dataset=digits is not CIFAR-10" in str(info.value)


@pytest.mark.parametrize("bad", ["model=mlp,nosuchmodel", "hydra.launcher.max_members=0"])
def test_a_refused_batched_sweep_writes_nothing(tmp_path, bad):
    out = run_module(["-m", *QUICK, "hydra/launcher=batched", "trainer.seed=0,1", *bad.split(),
                      "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Configuration error:" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "sweep").exists()
