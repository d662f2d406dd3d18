"""Manifold Mixup as Verma et al. (ICML 2019) train it: the stage is drawn per batch among an
eligible set (for PreAct ResNet-18 and WRN the input and the first two stages), each model
declares its own (`MANIFOLD_LAYERS`), `augmentation=manifold_mixup` trains with its defaults on
every model, the draws are the run's own and resume exactly, and the counts are recorded."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.augmentation import MixSettings, draw_epoch
from src.config.validate import validate
from src.errors import ConfigError
from src.models import MODELS, build_model, manifold_layers, mix_layer_choice, mix_layers
from src.models.manifold import DEFAULT, INPUT
from src.run.identity import fingerprint, flat_settings
from src.run.records import read_metrics
from src.run.signals import SIGNALS
from src.train import train
from src.training import model_cache
from src.training.trainer import SingleTrainer, StackedTrainer, Trainer
from tests.conftest import TINY, CountingBackend, make_cfg, run_module
from tests.test_mixup_family import CNN, CPU, TRAINER, H, K, W, tiny_data, weights
from tests.test_models import SMALL

CNN_LAYERS = ["input", "block1", "features"]
MANIFOLD = {"mixup_alpha": 2.0, "smoothing": 0.1, "mix_layer": CNN_LAYERS}


def single(aug: dict, seed: int = 0) -> SingleTrainer:
    model = model_cache.fresh_model(CNN, (3, H, W), K, CPU, seed)
    return SingleTrainer(model, tiny_data(crop=1, hflip=True), TRAINER, aug, CPU, seed)


def settings(mix_layer, model: str = "cnn") -> MixSettings:
    mix = MixSettings.from_config({"mixup_alpha": 1.0, "mix_layer": mix_layer})
    return mix.for_model(mix_layers(model), manifold_layers(model))


# ------------------------------------------------------------------ the eligible sets


def test_the_resnets_draw_among_the_input_and_their_first_two_stages_as_verma_et_al():
    assert manifold_layers("preact_resnet18") == ("input", "layer1", "layer2")
    assert manifold_layers("wide_resnet") == ("input", "group1", "group2")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_declares_an_eligible_set_of_its_own_stages(name):
    eligible = manifold_layers(name)
    assert eligible[0] == INPUT and len(eligible) >= 2  # input alone would be plain Mixup
    assert len(set(eligible)) == len(eligible) and set(eligible) <= set(mix_layers(name))
    assert mix_layer_choice(name, DEFAULT) == eligible


def test_default_resolves_to_the_models_set_and_a_list_of_one_is_that_stage():
    assert settings(DEFAULT, "preact_resnet18").layers == ("input", "layer1", "layer2")
    assert settings(DEFAULT, "preact_resnet18").drawn
    one = settings(["block1"])
    assert one.mix_layer == "block1" and not one.drawn and one == settings("block1")
    with pytest.raises(ValueError, match="resolve"):
        draw_epoch(MixSettings.from_config({"mixup_alpha": 1.0, "mix_layer": DEFAULT}),
                   np.random.default_rng(0), 4, 8, (8, 8))


# ------------------------------------------------------------------ the draws


def test_drawn_stages_are_uniform_over_the_eligible_set():
    mix = settings(DEFAULT, "preact_resnet18")
    steps = 3000
    layer = draw_epoch(mix, np.random.default_rng(0), steps, 8, (8, 8)).layer
    assert layer.shape == (steps,) and set(np.unique(layer)) == {0, 1, 2}
    counts = np.bincount(layer, minlength=3)
    chi2 = ((counts - steps / 3) ** 2 / (steps / 3)).sum()
    assert chi2 < 13.8  # the chi-square(2) 0.999 quantile: uniform, not merely present


def test_a_single_stage_draws_nothing_more_and_a_list_draws_after_the_lambdas():
    fixed, drawn = settings("block1"), settings(CNN_LAYERS)
    rng_fixed, rng_drawn, rng_plain = (np.random.default_rng(7) for _ in range(3))
    d_fixed = draw_epoch(fixed, rng_fixed, 20, 8, (8, 8))
    d_drawn = draw_epoch(drawn, rng_drawn, 20, 8, (8, 8))
    plain = rng_plain.beta(1.0, 1.0, 20)
    assert d_fixed.layer is None and np.array_equal(d_fixed.lam, plain)
    assert rng_fixed.bit_generator.state == rng_plain.bit_generator.state  # nothing else drawn
    assert np.array_equal(d_drawn.lam, plain)  # the lambdas come first, as they always have


def test_each_batch_is_mixed_at_its_drawn_stage():
    tr = single(MANIFOLD)
    tr.begin_epoch()
    drawn = tr.epoch_state.layers[0]
    assert len(drawn) == tr.steps_per_epoch and len(set(drawn)) > 1
    head_in: list[torch.Tensor] = []
    tr.model.head.register_forward_pre_hook(lambda m, a: head_in.append(a[0].detach()))
    tr.model.eval()
    for step in range(tr.steps_per_epoch):
        b = tr.batch(step)
        assert b.layer == CNN_LAYERS[drawn[step]]
        head_in.clear()
        with torch.no_grad():
            tr._forward(b.x, (b.lam, b.partners), b.layer)
            tr.model(b.x)
        if b.layer == "features":  # what the head reads is the mixed pooled features
            mixed, plain = head_in
            torch.testing.assert_close(mixed, b.lam * plain + (1 - b.lam) * plain[b.partners])


def test_the_counts_are_the_draws_and_add_up_to_the_steps():
    tr = single(MANIFOLD)
    tr.begin_epoch()
    drawn = list(tr.epoch_state.layers[0])
    stats = tr.train_epoch()[0]
    assert list(stats.mix_layer_counts) == CNN_LAYERS
    assert sum(stats.mix_layer_counts.values()) == tr.steps_per_epoch
    assert stats.mix_layer_counts == {s: drawn.count(i) for i, s in enumerate(CNN_LAYERS)}
    assert single({**MANIFOLD, "mix_layer": "block1"}).train_epoch()[0].mix_layer_counts is None


def test_runs_repeat_and_resume_inside_an_epoch_exactly_through_a_checkpoint():
    whole = single(MANIFOLD)
    whole_stats = [whole.train_epoch()[0], whole.train_epoch()[0]]
    again = single(MANIFOLD)
    again.train_epoch(), again.train_epoch()
    part = single(MANIFOLD)
    part.train_epoch()
    part.begin_epoch()
    part.train_epoch(stop=lambda: part.epoch_state.step >= 2)
    saved = io.BytesIO()
    torch.save(copy.deepcopy(part.state_dict()), saved)  # as a checkpoint file holds it
    saved.seek(0)
    resumed = single(MANIFOLD)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    stats = resumed.train_epoch()[0]
    assert stats.mix_layer_counts == whole_stats[1].mix_layer_counts
    for name, w in weights(whole).items():
        assert torch.equal(w, weights(again)[name]), name
        assert torch.equal(w, weights(resumed)[name]), name


def test_a_compiled_model_keeps_one_graph_per_drawn_stage_and_matches_eager(monkeypatch):
    counter = CountingBackend()
    monkeypatch.setitem(model_cache.COMPILE_OPTIONS, "backend", counter)
    torch._dynamo.reset()
    try:
        runs = []
        for compile_ in (False, True):
            model = model_cache.fresh_model(CNN, (3, H, W), K, CPU, seed=0)
            tr = SingleTrainer(model, tiny_data(), {**TRAINER, "compile": compile_}, MANIFOLD,
                               CPU, 0)
            tr.train_epoch(), tr.train_epoch()
            runs.append(weights(tr))
    finally:
        torch._dynamo.reset()
    assert 1 < counter.graphs <= len(CNN_LAYERS)  # not one per step
    for name, w in runs[0].items():
        torch.testing.assert_close(runs[1][name], w, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ stacked members


def test_stacked_members_each_mix_at_their_own_stage_as_their_separate_runs():
    """One vmapped call cannot branch per member: every stage gets a mixer, lambda 1 where a
    member did not draw it. Members draw different stages, and each still trains as alone."""
    augs = [MANIFOLD, MANIFOLD, {**MANIFOLD, "mixup_alpha": 0.0}]  # the last one mixes nothing
    data = tiny_data(crop=1, hflip=True)
    stacked = StackedTrainer(CNN, (3, H, W), data, TRAINER, augs, CPU, [0, 1, 2])
    stacked.begin_epoch()
    layers = stacked.epoch_state.layers
    assert layers[2] is None and layers[0] != layers[1]
    stats = stacked.train_epoch()
    assert stats[2].mix_layer_counts is None
    for k, seed in enumerate((0, 1, 2)):
        model = model_cache.fresh_model(CNN, (3, H, W), K, CPU, seed)
        alone = SingleTrainer(model, data, TRAINER, augs[k], CPU, seed)
        own = alone.train_epoch()[0]
        assert stats[k].mix_layer_counts == own.mix_layer_counts
        assert stats[k].loss == pytest.approx(own.loss, rel=1e-4)
        member = stacked.member_state_dict(k)
        for name, w in weights(alone).items():
            torch.testing.assert_close(member[name], w, rtol=1e-4, atol=1e-5, msg=name)


def test_a_list_valued_mix_layer_may_train_its_seeds_together():
    cfg = make_cfg(["augmentation=manifold_mixup", "trainer.parallel_seeds=[0,1]"],
                   run_dir="/nonexistent")
    validate(cfg)  # StackedTrainer mixes each member at its own stage: nothing to refuse


def test_several_stages_with_a_mixer_each_in_one_forward():
    torch.manual_seed(0)
    model = build_model({"name": "cnn", **SMALL["cnn"]}, (1, 8, 8), 10).eval()
    x = torch.randn(4, 1, 8, 8)
    identity = {s: (lambda h: h) for s in CNN_LAYERS}
    assert torch.equal(model(x, mix_at=tuple(CNN_LAYERS), mixer=identity), model(x))
    zero_one = {**identity, "block1": torch.zeros_like}
    assert torch.equal(model(x, mix_at=tuple(CNN_LAYERS), mixer=zero_one),
                       model(x, mix_at="block1", mixer=torch.zeros_like))
    with pytest.raises(ValueError, match="one mixer for each"):
        model(x, mix_at=("input", "block1"), mixer=torch.zeros_like)
    with pytest.raises(ValueError, match="not a stage"):
        model(x, mix_at=("input", "layer9"), mixer={"input": torch.zeros_like})


# ------------------------------------------------------------------ whole runs


def counts_of(run_dir: Path) -> list[dict[str, int]]:
    return [row["mix_layer_counts"] for row in read_metrics(run_dir / "metrics.jsonl")]


def small_model(name: str) -> list[str]:
    return [f"model={name}"] + [f"model.{k}={json.dumps(v)}" for k, v in SMALL[name].items()]


QUICK = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.steps_per_epoch=5",
         "trainer.progress=false", "augmentation=manifold_mixup"]


def test_metrics_record_each_epochs_counts_summing_to_its_steps(tmp_path):
    result = train(make_cfg([*QUICK, *small_model("cnn")], run_dir=tmp_path))
    assert result["status"] == "completed" and result["method"] == "manifold_mixup"
    counts = counts_of(tmp_path)
    assert len(counts) == 2 and counts[0] != counts[1]  # drawn afresh each epoch
    for c in counts:
        assert list(c) == ["input", "block1"] and sum(c.values()) == 5


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"preact_resnet18"}))
def test_manifold_mixup_trains_with_its_defaults_on_every_model(tmp_path, name):
    cfg = make_cfg([*QUICK, "trainer.epochs=1", *small_model(name)], run_dir=tmp_path)
    assert cfg.augmentation.mix_layer == DEFAULT
    assert train(cfg)["status"] == "completed"
    (counts,) = counts_of(tmp_path)
    assert tuple(counts) == manifold_layers(name) and sum(counts.values()) == 5


def test_cli_manifold_mixup_on_preact_resnet18_trains_with_its_defaults(tmp_path):
    run_dir = tmp_path / "run"
    out = run_module(["augmentation=manifold_mixup", "model=preact_resnet18", "model.width=4",
                      "trainer.epochs=1", "trainer.batch_size=16", "trainer.steps_per_epoch=6",
                      "trainer.progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (counts,) = counts_of(run_dir)
    assert list(counts) == ["input", "layer1", "layer2"] and sum(counts.values()) == 6


def test_a_run_stopped_inside_an_epoch_resumes_to_the_uninterrupted_run(
        tmp_path, monkeypatch):
    from src import train as entry
    from src.run import preflight

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preflight, "FAILED_JOBS", [])
    args = [*QUICK, *TINY[2:4], "trainer.checkpoint_interval_s=0"]

    def cli(run_dir: str) -> None:
        monkeypatch.setattr(sys, "argv", ["src.train", *args, f"hydra.run.dir={run_dir}",
                                          "hydra/job_logging=disabled"])
        entry.cli()

    try:
        cli("whole")
        original, steps = Trainer.step, []

        def signalled(self, batch):
            steps.append(1)
            if len(steps) == 7:  # the second step of the second epoch
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, batch)

        monkeypatch.setattr(Trainer, "step", signalled)
        with pytest.raises(SystemExit) as info:
            cli("part")
        assert info.value.code == 75 and (tmp_path / "part" / "checkpoint.pt").exists()
        monkeypatch.setattr(Trainer, "step", original)
        SIGNALS.restore()
        cli("part")
    finally:
        SIGNALS.restore()
    whole, part = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("whole", "part"))
    keys = ("train_loss", "test_acc", "test_loss", "mix_layer_counts")
    assert [{k: r[k] for k in keys} for r in part] == [{k: r[k] for k in keys} for r in whole]


# ------------------------------------------------------------------ refusals and identity


BAD = [
    (["augmentation.mix_layer=[input,layer9]"], "'layer9' is not a stage"),
    (["augmentation.mix_layer=[]"], "empty list"),
    (["augmentation.mix_layer=[input,block1,input]"], "named twice"),
    (["model=preact_resnet18", "augmentation.mix_layer=features"], "'layer2'"),
    (["augmentation.mix_layer=[input,3]"], "strings"),
]


@pytest.mark.parametrize("overrides,text", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_mix_layers_name_the_key_the_value_and_the_models_stages(overrides, text):
    cfg = make_cfg(["augmentation=manifold_mixup", *overrides], run_dir="/nonexistent")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert msg.startswith("augmentation.mix_layer=") and text in msg and "\n" not in msg, msg
    model = cfg.model.name
    assert all(repr(s) in msg for s in mix_layers(model))  # what is allowed, by name
    assert str(list(manifold_layers(model))) in msg  # and what `default` means


def test_cutmix_refuses_drawn_stages_as_it_refuses_one_hidden_stage():
    cfg = make_cfg(["augmentation=manifold_mixup", "augmentation.cutmix_alpha=1.0"],
                   run_dir="/nonexistent")
    with pytest.raises(ConfigError, match="CutMix"):
        validate(cfg)


def test_a_single_stage_is_recorded_and_hashed_as_the_name_it_always_was():
    one = make_cfg(["augmentation=manifold_mixup", "augmentation.mix_layer=block1"])
    drawn = make_cfg(["augmentation=manifold_mixup", "augmentation.mix_layer=[input,block1]"])
    assert flat_settings(one)["augmentation.mix_layer"] == "block1"
    assert flat_settings(drawn)["augmentation.mix_layer"] == ["input", "block1"]
    assert fingerprint(one) != fingerprint(drawn)
