"""Runs that start from another run (`trainer.init_from`, src.run.init_from): the child loads
the parent's weights, names it in its records, is another run when the parent changes, and
every unusable parent is refused before anything is written. Wei et al.'s two-stage protocol
(conf/experiment/gls_stage1.yaml, gls_stage2.yaml) runs end to end on the bundled digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from src.errors import ConfigError
from src.files import read_json
from src.run.identity import fingerprint, flat_settings, input_records
from src.train import train
from tests.conftest import make_cfg, run_module

# An MLP has no batch-norm statistics, which move in a child's training epoch whatever its lr:
# at a vanishing lr its first evaluation is its parent's model's.
MLP = ["model=mlp", "model.hidden_sizes=[32]"]
BASE = ["trainer.epochs=3", "trainer.batch_size=64", "trainer.progress=false",
        "dataset.val_fraction=0.2", "noise=symmetric", "noise.rate=0.4", *MLP]
STILL = ["trainer.lr=1e-9", "trainer.schedule=constant", "trainer.epochs=1"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A completed run with a validation split: best.pt and last.pt."""
    folder = tmp_path_factory.mktemp("parent") / "run"
    train(make_cfg(BASE, run_dir=folder))
    return folder


def child_cfg(parent_dir: Path | str, run_dir: Path, extra: list[str] = ()):
    """The parent's settings at a vanishing lr for one epoch, started from `parent_dir`;
    a model=... among `extra` replaces the parent's model."""
    base = [o for o in BASE if o not in MLP] if any(o.startswith("model=") for o in extra) \
        else BASE
    return make_cfg(base + STILL + [f"trainer.init_from='{parent_dir}'", *extra], run_dir=run_dir)


def copy_of(parent_dir: Path, where: Path) -> Path:
    shutil.copytree(parent_dir, where)
    return where


@pytest.mark.parametrize("which, field", [("last", "final_test_acc"),
                                          ("best", "test_acc_at_best_val")])
def test_a_child_starts_from_its_parents_chosen_weights(parent, tmp_path, which, field):
    before = read_json(parent / "results.json")
    child = train(child_cfg(parent, tmp_path / "child", [f"trainer.init_weights={which}"]))
    assert child["status"] == "completed"
    assert child["final_test_acc"] == pytest.approx(before[field], abs=1e-12)
    scratch = train(make_cfg(BASE + STILL, run_dir=tmp_path / "scratch"))
    assert scratch["final_test_acc"] < before[field] - 0.2  # a fresh model is near chance


def test_seeds_trained_together_each_start_from_the_parent(parent, tmp_path):
    out = train(child_cfg(parent, tmp_path / "child", ["trainer.parallel_seeds=[0,1]"]))
    expected = read_json(parent / "results.json")["test_acc_at_best_val"]
    assert [r["final_test_acc"] for r in out["runs"]] == pytest.approx([expected] * 2, abs=1e-12)


def test_the_trainer_holds_the_parents_weights_and_buffers_exactly(tmp_path):
    """With batch norm (running statistics are buffers), one model and stacked members."""
    from src.data.tensors import prepare_data
    from src.run.lifecycle import build_trainer
    from src.training.device import resolve_execution

    cnn = ["model=cnn", "model.channels=[8,16]", "trainer.epochs=1", "trainer.progress=false",
           "dataset.val_fraction=0.2"]
    train(make_cfg(cnn, run_dir=tmp_path / "parent"))
    saved = torch.load(tmp_path / "parent" / "best.pt", weights_only=True)
    cfgs = [make_cfg(cnn + [f"trainer.init_from={tmp_path / 'parent'}", f"trainer.seed={s}"],
                     run_dir=tmp_path / f"child{s}") for s in (3, 4)]
    execution = resolve_execution(cfgs[0].trainer)
    data, _ = prepare_data(cfgs[0], execution.device, execution.channels_last, [])
    single = build_trainer(cfgs[:1], data, execution)
    fresh = single.model.state_dict()
    assert not all(torch.equal(t, saved[k]) for k, t in fresh.items())
    single.begin_epoch()  # the first epoch of a fresh run loads them
    assert all(torch.equal(t, saved[k]) for k, t in single.model.state_dict().items())
    stacked = build_trainer(cfgs, data, execution)
    stacked.begin_epoch()
    for k in range(2):
        member = stacked.member_state_dict(k)
        assert set(member) == set(saved)
        assert all(torch.equal(member[name], saved[name]) for name in saved)


def test_the_childs_records_name_its_parent(parent, tmp_path):
    from src.run.identity import file_digest

    child = train(child_cfg(parent, tmp_path / "child"))
    record = child["inputs"]["trainer.init_from"]
    parent_results = read_json(parent / "results.json")
    assert record["run_dir"] == str(parent)
    assert record["fingerprint"] == parent_results["config_fingerprint"]
    assert record["path"] == str(parent / "best.pt")
    assert record["hash"] == file_digest(parent / "best.pt")
    assert record["setting"]
    # Where the parent lies is not a setting; which of its files is, when not the default.
    assert "trainer.init_from" not in child["config"]
    assert "trainer.init_weights" not in child["config"]
    last = train(child_cfg(parent, tmp_path / "last", ["trainer.init_weights=last"]))
    assert last["config"]["trainer.init_weights"] == "last"
    # The resolved config beside the results (and in W&B's config) names the folder.
    assert OmegaConf.load(tmp_path / "child" / "config.yaml").trainer.init_from == str(parent)


def test_parents_of_one_setting_share_their_setting_not_their_identity(parent, tmp_path):
    other_seed = tmp_path / "seed1"
    train(make_cfg(BASE + ["trainer.seed=1"], run_dir=other_seed))
    a = input_records(child_cfg(parent, tmp_path / "a"))["trainer.init_from"]
    b = input_records(child_cfg(other_seed, tmp_path / "b"))["trainer.init_from"]
    assert a["setting"] == b["setting"]
    assert a["fingerprint"] != b["fingerprint"] and a["hash"] != b["hash"]


def test_a_moved_parent_is_the_same_parent_and_a_retrained_one_is_not(parent, tmp_path):
    moved = copy_of(parent, tmp_path / "moved")
    first = fingerprint(child_cfg(parent, tmp_path / "child"))
    assert fingerprint(child_cfg(moved, tmp_path / "child")) == first
    done = train(child_cfg(moved, tmp_path / "child"))
    assert done["config_fingerprint"] == first
    # Retrained (another setting) in the same folder: the child is another run.
    train(make_cfg(BASE + ["trainer.lr=0.05", "skip_completed=false"], run_dir=moved))
    assert fingerprint(child_cfg(moved, tmp_path / "child")) != first
    with pytest.raises(ConfigError) as err:  # never served the stale child as completed
        train(child_cfg(moved, tmp_path / "child"))
    assert err.value.key == "skip_completed" and "trainer.init_from changed" in str(err.value)
    again = train(child_cfg(moved, tmp_path / "child", ["skip_completed=false"]))
    assert again["status"] == "completed" and again["config_fingerprint"] != first
    assert again["inputs"]["trainer.init_from"]["fingerprint"] == \
        read_json(moved / "results.json")["config_fingerprint"]


def test_runs_from_scratch_keep_their_fingerprint():
    cfg = make_cfg(BASE, run_dir=Path("/tmp/unused"))
    with_keys = fingerprint(cfg)
    settings = flat_settings(cfg)
    with open_dict(cfg):
        del cfg.trainer["init_from"], cfg.trainer["init_weights"]
    assert fingerprint(cfg) == with_keys
    assert not any(k.startswith("trainer.init_") for k in settings)


def _empty(parent: Path, tmp: Path, name: str = "empty") -> Path:
    (tmp / name).mkdir()
    return tmp / name


def _with_results(parent: Path, tmp: Path) -> Path:
    folder = copy_of(parent, tmp / "failed")
    results = read_json(folder / "results.json")
    (folder / "results.json").write_text(json.dumps({**results, "status": "failed"}))
    return folder


def _without_best(parent: Path, tmp: Path) -> Path:
    folder = copy_of(parent, tmp / "no_best")
    (folder / "best.pt").unlink()
    return folder


def _garbled_best(parent: Path, tmp: Path) -> Path:
    folder = copy_of(parent, tmp / "garbled")
    (folder / "best.pt").write_bytes(b"not a torch file")
    return folder


def _with_config(key: str, value):
    def edit(parent: Path, tmp: Path) -> Path:
        folder = copy_of(parent, tmp / "edited")
        cfg = OmegaConf.load(folder / "config.yaml")
        OmegaConf.update(cfg, key, value)
        OmegaConf.save(cfg, folder / "config.yaml")
        return folder
    return edit


# case: (the folder trainer.init_from names, child overrides, refused key, what it says)
REFUSALS = {
    "no such folder": (lambda p, t: t / "nowhere", [], "trainer.init_from", "no such folder"),
    "not a run": (_empty, [], "trainer.init_from", "holds no readable results.json"),
    "not completed": (_with_results, [], "trainer.init_from", "its run is failed"),
    "its own folder": (lambda p, t: _empty(p, t, "child"), [], "trainer.init_from",
                       "this run's own folder"),
    "no such weights": (_without_best, [], "trainer.init_weights",
                        "best.pt is written with a validation split"),
    "unreadable weights": (_garbled_best, [], "trainer.init_from", "weights file can be read"),
    "another model": (lambda p, t: p, ["model=cnn"], "trainer.init_from",
                      "model.name is 'mlp' there, 'cnn' here"),
    "another architecture": (lambda p, t: p, ["model.hidden_sizes=[16]"], "trainer.init_from",
                             "model.hidden_sizes: [32] there, [16] here"),
    "another dataset": (_with_config("dataset.name", "mnist"), [], "trainer.init_from",
                        "dataset.name is 'mnist' there"),
    "other classes": (_with_config("dataset.num_classes", 5), [], "trainer.init_from",
                      "dataset.num_classes is 5 there"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_an_unusable_parent_is_refused_before_anything_is_written(parent, tmp_path, case):
    where, extra, key, says = REFUSALS[case]
    folder = where(parent, tmp_path)
    with pytest.raises(ConfigError) as err:
        train(child_cfg(folder, tmp_path / "child", extra))
    assert err.value.key == key and says in str(err.value), str(err.value)
    assert not (tmp_path / "child" / "results.json").exists()
    assert not (tmp_path / "child" / "config.yaml").exists()


@pytest.mark.parametrize("overrides, says", [
    (["trainer.init_weights=last"], "best (the default) while trainer.init_from is null"),
    (["trainer.init_weights=first"], "one of ['best', 'last']"),
    (["trainer.init_from=5"], "null or a path"),
])
def test_bad_init_keys_are_refused_with_what_is_allowed(tmp_path, overrides, says):
    from src.config.validate import validate

    with pytest.raises(ConfigError) as err:
        validate(make_cfg(BASE + overrides, run_dir=tmp_path))
    assert err.value.key.startswith("trainer.init_") and says in str(err.value)


def test_seeds_trained_together_share_one_parent(parent, tmp_path):
    """Each seed's own parent (an interpolation of trainer.seed) needs separate jobs: the
    members of one batched model load one parent. Refused before anything is written."""
    for s in (0, 1):
        copy_of(parent, tmp_path / "stage1" / f"seed={s}")
    cfg = child_cfg(str(tmp_path / "stage1") + "/seed=${trainer.seed}", tmp_path / "child",
                    ["trainer.parallel_seeds=[0,1]"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert err.value.key == "trainer.parallel_seeds" and "separate jobs" in str(err.value)
    assert not (tmp_path / "child").exists()


@pytest.mark.slow
def test_the_two_stage_protocol_runs_end_to_end(tmp_path):
    """gls_stage1 then gls_stage2 as real multiruns on the digits: each stage-2 run starts from
    the stage-1 run of its own seed, found by the interpolation of its trainer.init_from, and
    a parent's eps values train as one batched model."""
    tiny = ["dataset=digits", "model=cnn", "model.channels=[8,16]", "trainer.progress=false",
            "noise.rate=0.4", "trainer.seed=0,1", "~hydra.callbacks.analysis"]
    stage1 = run_module(["+experiment=gls_stage1", "task_name=s1", "trainer.epochs=2",
                         "trainer.milestones=[1]"] + tiny, cwd=tmp_path, timeout=600)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    parents = {p.parent.name: read_json(p)
               for p in (tmp_path / "outputs" / "s1").rglob("results.json")}
    assert set(parents) == {"seed=0", "seed=1"}
    assert all((tmp_path / "outputs" / "s1" / "noise.rate=0.4" / s / "best.pt").is_file()
               for s in parents)
    stage2 = run_module(["+experiment=gls_stage2", "task_name=s2", "trainer.epochs=1",
                         "augmentation.smoothing=0.2,-1.0", "hydra.launcher.stack=always",
                         'trainer.init_from="${paths.output_dir}/s1/noise.rate=${noise.rate}'
                         '/seed=${trainer.seed}"'] + tiny, cwd=tmp_path, timeout=600)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    children = [read_json(p) for p in (tmp_path / "outputs" / "s2").rglob("results.json")]
    assert len(children) == 4 and all(c["status"] == "completed" for c in children)
    for c in children:
        parent = c["inputs"]["trainer.init_from"]
        assert parent["run_dir"].endswith(f"s1/noise.rate=0.4/seed={c['seed']}")
        assert parent["fingerprint"] == parents[f"seed={c['seed']}"]["config_fingerprint"]
        assert "init_from" not in c["run_dir"]  # a location, not part of the folder's name
        assert c["trained_with"].startswith("2 runs differing in")  # both eps of one parent


@pytest.mark.parametrize("change", ["noise.seed=1", "dataset.val_seed=3", "noise.rate=0.2",
                                    "dataset.train_subset=200"])
def test_a_parent_on_other_data_is_refused(parent, tmp_path, change):
    """Another noise draw, validation split or subset: the child could validate on images its
    parent trained on."""
    with pytest.raises(ConfigError, match="could validate on images") as err:
        train(child_cfg(parent, tmp_path / "child", [change]))
    assert err.value.key == "trainer.init_from"
    assert not (tmp_path / "child" / "results.json").exists()
