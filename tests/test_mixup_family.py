"""The Mixup family at timm's parity: CutMix boxes and their lambdas, one lambda per batch, pair
or sample, the probability of mixing and of CutMix, permutation or flipped partners, Manifold
Mixup through the models' hidden states; drawn from each member's generators and resumable."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from src.augmentation import (
    MixSettings,
    box_around,
    box_lam,
    box_mask,
    cutmix_boxes,
    draw_epoch,
    lambda_weighted_hits,
    method_name,
    mix_images,
    mixed_target,
    mixup_smoothing_loss,
    partners,
    share_within_pairs,
    soft_cross_entropy,
)
from src.data.tensors import Split, TrainData
from src.training import model_cache
from src.training.device import Execution
from src.training.trainer import SingleTrainer, StackedTrainer
from tests.conftest import CountingBackend

K, B, H, W = 5, 8, 8, 8
CPU = Execution(torch.device("cpu"), None, channels_last=False)
CNN = {"name": "cnn", "channels": [4, 8], "dropout": 0.0}
TRAINER = {"batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
           "weight_decay": 5e-4, "schedule": "cosine", "epochs": 3, "eval_batch_size": 64}
FLIP = torch.arange(B - 1, -1, -1)


def mixing(**keys) -> MixSettings:
    """Mixing settings: these keys over conf/augmentation/none.yaml's."""
    return MixSettings.from_config(keys)


def tiny_data(crop: int = 0, hflip: bool = False, n: int = 48) -> TrainData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, H, W), generator=g, dtype=torch.uint8)
    y = torch.randint(0, K, (n,), generator=g)
    return TrainData(Split(x, y), Split(x[:16], y[:16]), y, None,
                     torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25), K,
                     crop_padding=crop, hflip=hflip)


def single(aug: dict, data: TrainData | None = None, seed: int = 0) -> SingleTrainer:
    model = model_cache.fresh_model(CNN, (3, H, W), K, CPU, seed)
    return SingleTrainer(model, data or tiny_data(crop=1, hflip=True), TRAINER, aug, CPU, seed)


def weights(tr: SingleTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


# ------------------------------------------------------------------ parity with timm's Mixup


@pytest.fixture
def timm_mixup():
    """timm's Mixup module, the reference (a test-only dependency: requirements-dev.txt)."""
    return pytest.importorskip("timm.data.mixup")


class _Fixed:
    """timm's Mixup with its random draws replaced by given ones: lambda and the CutMix choice
    (per batch, or per element as `_params_per_elem` gives them), and each box in the order
    its loop asks for them."""

    def __init__(self, timm_mixup, mode: str, lam, cut, boxes, monkeypatch, eps: float,
                 cutmix: bool):
        self.mixup = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0 if cutmix else 0.0,
                                      mode=mode, label_smoothing=eps, num_classes=K)
        if mode == "batch":
            self.mixup._params_per_batch = lambda: (float(lam[0]), bool(cut[0]))
        else:
            self.mixup._params_per_elem = lambda n: (lam[:n].astype(np.float32).copy(),
                                                     cut[:n].copy())
        queue = [tuple(int(v) for v in b) for b, c in zip(np.atleast_2d(boxes),
                                                           np.atleast_1d(cut)) if c]

        def next_box(img_shape, lam, ratio_minmax=None, correct_lam=True, count=None):
            box = queue.pop(0)
            return box, float(box_lam(np.array(box), H, W))
        monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", next_box)

    def __call__(self, x, y):
        return self.mixup(x.clone(), y)


def _check_against_timm(timm_mixup, mode, kind, lam, cut, monkeypatch):
    """Mix one batch with given draws (per batch: arrays of one) as timm does and as we do."""
    rng = np.random.default_rng(11)
    n = len(lam)
    cy, cx = rng.integers(0, H, n), rng.integers(0, W, n)
    side = (H * np.sqrt(1 - lam)).astype(np.int64)
    boxes = box_around(cy, cx, side, side, H, W)
    boxes[~cut] = 0
    lam_final = np.where(cut, box_lam(boxes, H, W), lam)  # timm corrects lambda by default
    eps = 0.1
    x = torch.randn(B, 3, H, W)
    y = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(1))
    fixed = _Fixed(timm_mixup, mode, lam, cut, boxes, monkeypatch, eps, kind != "mixup")
    x_timm, target_timm = fixed(x, y)

    lam_t = torch.tensor(lam_final, dtype=torch.float32)
    cut_t, boxes_t = torch.from_numpy(cut), torch.from_numpy(boxes)
    if mode == "batch":
        lam_t, cut_t, boxes_t = lam_t[0], cut_t[0], boxes_t[0]
    if mode == "pair":
        lam_t, cut_t, boxes_t = (share_within_pairs(t, FLIP) for t in (lam_t, cut_t, boxes_t))
    ours = mix_images(x, lam_t, FLIP, None if kind == "mixup" else boxes_t,
                      cut_t if kind == "switch" else None)
    torch.testing.assert_close(ours, x_timm, rtol=1e-6, atol=1e-6)
    target = mixed_target(y, FLIP, lam_t, eps, K)
    torch.testing.assert_close(target, target_timm, rtol=1e-6, atol=1e-6)
    logits = torch.randn(B, K)
    loss = mixup_smoothing_loss(logits, y, y[FLIP], lam_t, torch.tensor(eps))
    torch.testing.assert_close(loss, soft_cross_entropy(logits, target_timm), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("kind", ["mixup", "cutmix", "switch"])
def test_mixed_images_and_targets_match_timm(timm_mixup, mode, kind, monkeypatch):
    rng = np.random.default_rng(7)
    n = 1 if mode == "batch" else B
    lam = rng.uniform(0.05, 0.95, n)
    if kind != "switch":
        cut = np.full(n, kind == "cutmix")
        _check_against_timm(timm_mixup, mode, kind, lam, cut, monkeypatch)
        return
    if mode == "batch":  # the batch is cut or blended: both
        for cut in (True, False):
            _check_against_timm(timm_mixup, mode, kind, lam, np.array([cut]), monkeypatch)
        return
    cut = rng.random(n) < 0.5
    cut[:2] = [True, False]  # both kinds in every batch (pairs use the first half)
    _check_against_timm(timm_mixup, mode, kind, lam, cut, monkeypatch)


class _LegacyNumpy:
    """numpy's global generator behind the Generator method our box code calls, so that our
    boxes and timm's come from the same numbers."""

    @staticmethod
    def integers(low, high, size=None):
        return np.random.randint(low, high, size=size)


@pytest.mark.parametrize("minmax", [None, (0.2, 0.8)])
@pytest.mark.parametrize("correct_lam", [True, False])
def test_boxes_and_their_lambda_match_timm(timm_mixup, minmax, correct_lam):
    for seed, lam in enumerate([0.1, 0.37, 0.5, 0.93]):
        np.random.seed(seed)
        (yl, yh, xl, xh), lam_timm = timm_mixup.cutmix_bbox_and_lam(
            (3, H, W), lam, ratio_minmax=minmax, correct_lam=correct_lam, count=16)
        np.random.seed(seed)
        boxes, lam_ours = cutmix_boxes(_LegacyNumpy(), np.full(16, lam), (H, W), minmax,
                                       correct_lam, 16)
        assert np.array_equal(boxes, np.stack([yl, yh, xl, xh], -1))
        assert np.allclose(lam_ours, lam_timm)


# ------------------------------------------------------------------ the pieces


def test_box_mask_is_each_box_by_broadcasting():
    rng = np.random.default_rng(0)
    boxes = box_around(rng.integers(0, H, (3, B)), rng.integers(0, W, (3, B)),
                       rng.integers(0, H + 1, (3, B)), rng.integers(0, W + 1, (3, B)), H, W)
    mask = box_mask(torch.from_numpy(boxes), H, W)
    assert mask.shape == (3, B, H, W)
    for k in range(3):
        for i in range(B):
            ref = torch.zeros(H, W, dtype=torch.bool)
            yl, yh, xl, xh = boxes[k, i]
            ref[yl:yh, xl:xh] = True
            assert torch.equal(mask[k, i], ref)


def test_cutmix_pastes_the_partner_inside_the_box_only():
    x = torch.randn(2, B, 3, H, W)  # two members
    perm = torch.stack([torch.randperm(B), torch.randperm(B)])
    boxes = torch.tensor([[1, 5, 2, 8], [0, 3, 0, 3]])  # one per member (per batch)
    out = mix_images(x, torch.ones(2), perm, boxes, None)
    for k, (yl, yh, xl, xh) in enumerate(boxes.tolist()):
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[yl:yh, xl:xh] = True
        assert torch.equal(out[k][..., inside], x[k][perm[k]][..., inside])
        assert torch.equal(out[k][..., ~inside], x[k][..., ~inside])


@pytest.mark.parametrize("batch_size", [8, 9])
def test_partners(batch_size):
    gen = torch.Generator().manual_seed(0)
    flip = partners(batch_size, mixing(pairing="flip"), gen, torch.device("cpu"))
    assert flip.tolist() == list(range(batch_size))[::-1]
    perm = partners(batch_size, mixing(), gen, torch.device("cpu"))
    assert sorted(perm.tolist()) == list(range(batch_size))
    seen = set()
    for _ in range(20):  # a pair needs partners that pair up: a random matching
        p = partners(batch_size, mixing(mix_mode="pair"), gen, torch.device("cpu"))
        assert torch.equal(p[p], torch.arange(batch_size))
        assert (p == torch.arange(batch_size)).sum() == batch_size % 2
        seen.add(tuple(p.tolist()))
    assert len(seen) > 10


def test_pairs_share_their_first_members_draws():
    lam = torch.arange(2 * B, dtype=torch.float).view(2, B)  # two members
    p = torch.stack([FLIP, torch.tensor([3, 2, 1, 0, 7, 6, 5, 4])])
    shared = share_within_pairs(lam, p)
    assert torch.equal(shared[0], torch.tensor([0., 1, 2, 3, 3, 2, 1, 0]))
    assert torch.equal(shared[1], torch.tensor([8., 9, 9, 8, 12, 13, 13, 12]))
    boxes = torch.arange(2 * B * 4).view(2, B, 4)
    assert torch.equal(share_within_pairs(boxes, p)[0, 7], boxes[0, 0])


def test_per_sample_lambda_in_loss_and_hits():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(B, K, generator=g), torch.randint(0, K, (B,), generator=g)
    perm, lam = torch.randperm(B, generator=g), torch.rand(B, generator=g)
    loss = mixup_smoothing_loss(logits, y, y[perm], lam, torch.tensor(0.2))
    target = mixed_target(y, perm, lam, 0.2, K)
    torch.testing.assert_close(loss, soft_cross_entropy(logits, target))
    pred = logits.argmax(-1)
    hits = lambda_weighted_hits(logits, y, y[perm], lam)
    manual = sum(lam[i] * (pred[i] == y[i]) + (1 - lam[i]) * (pred[i] == y[perm][i])
                 for i in range(B))
    torch.testing.assert_close(hits, manual)
    # one lambda for the batch is the same as that lambda for every sample
    same = torch.full((B,), 0.3)
    torch.testing.assert_close(mixup_smoothing_loss(logits, y, y[perm], same, torch.tensor(0.2)),
                               mixup_smoothing_loss(logits, y, y[perm], torch.tensor(0.3),
                                                    torch.tensor(0.2)))


# ------------------------------------------------------------------ the epoch's draws


def test_mixup_alone_draws_exactly_what_it_always_has():
    draws = draw_epoch(mixing(mixup_alpha=0.4), np.random.default_rng(3), 50, B, (H, W))
    assert np.array_equal(draws.lam, np.random.default_rng(3).beta(0.4, 0.4, 50))
    assert draws.cut is None and draws.boxes is None


def test_draws_follow_their_probabilities():
    steps = 4000
    both = mixing(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.6, switch_prob=0.3)
    d = draw_epoch(both, np.random.default_rng(0), steps, B, (H, W))
    # (a CutMix batch whose box came out empty keeps lambda 1: rare with Beta(1, 1))
    assert abs((d.lam < 1).mean() - 0.6) < 0.03
    assert abs(d.cut.mean() - 0.6 * 0.3) < 0.03
    assert not d.boxes[~d.cut].any()  # unmixed and Mixup's batches paste nothing
    assert np.allclose(d.lam[d.cut], box_lam(d.boxes[d.cut], H, W))
    elem = draw_epoch(mixing(cutmix_alpha=1.0, mix_mode="elem"), np.random.default_rng(0),
                      10, B, (H, W))
    assert elem.lam.shape == (10, B) and elem.boxes.shape == (10, B, 4) and elem.cut is None
    assert (elem.boxes >= 0).all() and (elem.boxes[..., :2] <= H).all()
    assert (elem.boxes[..., 0] <= elem.boxes[..., 1]).all()


def test_minmax_boxes_have_sides_in_the_range():
    d = draw_epoch(mixing(cutmix_alpha=1.0, cutmix_minmax=(0.25, 0.75), mix_mode="elem"),
                   np.random.default_rng(1), 200, B, (H, W))
    sides = np.stack([d.boxes[..., 1] - d.boxes[..., 0], d.boxes[..., 3] - d.boxes[..., 2]])
    assert sides.min() >= 2 and sides.max() <= 5 and len(np.unique(sides)) == 4
    assert (d.boxes[..., 1] <= H).all() and (d.boxes[..., 3] <= W).all()
    assert np.allclose(d.lam, box_lam(d.boxes, H, W))


def test_without_correction_cutmix_keeps_the_beta_draw():
    settings = mixing(cutmix_alpha=1.0, correct_lam=False)
    d = draw_epoch(settings, np.random.default_rng(5), 100, B, (H, W))
    assert np.array_equal(d.lam, np.random.default_rng(5).beta(1.0, 1.0, 100))


# ------------------------------------------------------------------ in the trainer


def test_a_cutmix_batch_is_its_images_with_the_partners_box_pasted():
    data = tiny_data()  # no crop or flip: the images are the stored ones
    tr = single({"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "smoothing": 0.0,
                 "pairing": "flip", "mix_mode": "elem"}, data)
    tr.begin_epoch()
    b = tr.batch(0)
    x, y, y2, lam = b.x, b.y, b.y2, b.lam
    idx = tr.epoch_state.order[0, :B]
    plain = tr.normalise(data.train.x[idx])
    inside = box_mask(tr.epoch_state.boxes[0, 0], H, W)[:, None]  # (B, 1, H, W)
    assert torch.equal(torch.where(inside, plain[FLIP], plain), x)
    assert torch.equal(y, data.train.y[idx]) and torch.equal(y2, y[FLIP])
    assert torch.allclose(lam, 1 - inside.flatten(1).float().mean(1))


@pytest.mark.parametrize("aug", [
    {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "mix_mode": "elem", "mix_prob": 0.7},
    {"mixup_alpha": 0.5, "cutmix_alpha": 1.0, "cutmix_minmax": [0.3, 0.9], "mix_mode": "pair"},
    {"mixup_alpha": 2.0, "mix_layer": "block1", "mix_mode": "pair", "pairing": "flip"},
], ids=["switch-elem", "minmax-pair", "manifold"])
def test_runs_repeat_and_resume_inside_an_epoch_exactly(aug):
    aug = {"smoothing": 0.1, **aug}
    whole = single(aug)
    whole.train_epoch(), whole.train_epoch()
    again = single(aug)
    again.train_epoch(), again.train_epoch()
    part = single(aug)
    part.train_epoch()
    part.begin_epoch()
    part.train_epoch(stop=lambda: part.epoch_state.step >= 2)
    assert part.epoch_state.step == 2
    resumed = single(aug)
    resumed.load_state_dict(copy.deepcopy(part.state_dict()))  # as a checkpoint holds it
    resumed.train_epoch()
    for name, w in weights(whole).items():
        assert torch.equal(w, weights(again)[name]), name
        assert torch.equal(w, weights(resumed)[name]), name


def test_manifold_mixup_mixes_the_hidden_state_not_the_images():
    aug = {"mixup_alpha": 1.0, "smoothing": 0.0, "mix_layer": "features", "pairing": "flip"}
    tr = single(aug)
    tr.begin_epoch()
    b = tr.batch(0)
    x, y, y2, lam, perm = b.x, b.y, b.y2, b.lam, b.partners
    seen = []
    hook = tr.model.head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    tr.model.eval()
    with torch.no_grad():
        tr._forward(x, (lam, perm))
        tr.model(x)
    hook.remove()
    mixed, plain = seen
    torch.testing.assert_close(mixed, lam * plain + (1 - lam) * plain[perm])
    assert torch.equal(y2, y[perm])


@pytest.mark.parametrize("aug", [
    {"mixup_alpha": 1.0, "mix_layer": "features", "mix_mode": "elem"},
    {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "mix_mode": "pair", "mix_prob": 0.8},
], ids=["manifold-elem", "switch-pair"])
def test_stacked_members_mix_as_their_separate_runs(aug):
    aug = {"smoothing": 0.1, **aug}
    data = tiny_data(crop=1, hflip=True)
    stacked = StackedTrainer(CNN, (3, H, W), data, TRAINER, aug, CPU, [0, 1])
    runs = [single(aug, data, seed) for seed in (0, 1)]
    stats = stacked.train_epoch()
    for k, tr in enumerate(runs):
        assert stats[k].loss == pytest.approx(tr.train_epoch()[0].loss, rel=1e-4)
        member = stacked.member_state_dict(k)
        for name, w in weights(tr).items():
            torch.testing.assert_close(member[name], w, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("args,name", [
    ((0, 0), "none"), ((0.2, 0), "mixup"), ((0, 0.1), "smoothing"), ((0, -0.4), "smoothing"),
    ((1, 0.1), "mixup_smoothing"), ((0, 0, 1.0), "cutmix"), ((0, 0.1, 1.0), "cutmix_smoothing"),
    ((0.8, 0, 1.0), "mixup_cutmix"), ((0.8, -1, 1.0), "mixup_cutmix_smoothing"),
    ((2, 0, 0, "block1"), "manifold_mixup"), ((2, 0.1, 0, "block1"), "manifold_mixup_smoothing"),
    ((1, 0.1, 1.0, "input", 0.0), "smoothing"), ((1, 0, 0, "input", 0.0), "none"),
])
def test_method_name(args, name):
    assert method_name(*args) == name


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_compiled_manifold_mixup_compiles_once_and_matches_eager(mode, monkeypatch):
    """Each step's lambda and partners reach the compiled model as inputs, not as code."""
    counter = CountingBackend()
    monkeypatch.setitem(model_cache.COMPILE_OPTIONS, "backend", counter)
    torch._dynamo.reset()
    aug = {"mixup_alpha": 1.0, "smoothing": 0.1, "mix_layer": "block1", "mix_mode": mode}
    try:
        runs = []
        for compile_ in (False, True):
            model = model_cache.fresh_model(CNN, (3, H, W), K, CPU, seed=0)
            tr = SingleTrainer(model, tiny_data(), {**TRAINER, "compile": compile_}, aug, CPU, 0)
            tr.train_epoch(), tr.train_epoch()
            runs.append(weights(tr))
    finally:
        torch._dynamo.reset()
    assert counter.graphs == 1
    for name, w in runs[0].items():
        torch.testing.assert_close(runs[1][name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_a_minmax_range_turns_cutmix_on_as_timm_does(timm_mixup):
    """cutmix_minmax with cutmix_alpha = 0: timm forces alpha 1 and cuts every batch; the suite
    did nothing and recorded method `none` with plain training's loss."""
    aug = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "cutmix_minmax": [0.3, 0.7]}
    reference = timm_mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.3, 0.7),
                                 num_classes=K, label_smoothing=0.0)
    x = torch.rand(B, 3, H, W)
    mixed = x.clone()
    out = reference(mixed, torch.arange(B) % K)
    target = out[1] if isinstance(out, tuple) else out
    assert not torch.equal(mixed, x) and (target.max(-1).values < 1).any()  # timm cut them
    settings = MixSettings.from_config(aug)
    assert settings.mixes and settings.cutmix_alpha == 1.0
    draws = draw_epoch(settings, np.random.default_rng(0), 4, B, (H, W))
    assert draws.boxes is not None and (draws.lam < 1).all()
    sides = draws.boxes[..., 1] - draws.boxes[..., 0]
    assert ((sides >= int(H * 0.3)) & (sides < int(H * 0.7))).all()
    from src.run.identity import run_identity
    from tests.conftest import make_cfg
    cfg = make_cfg(["augmentation.cutmix_minmax=[0.3,0.7]"], run_dir=Path("/o/r"))
    assert run_identity(cfg, "")["method"] == "cutmix"
