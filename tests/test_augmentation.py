"""The augmentation maths: Mixup, label smoothing, their combination, crop and flip."""

import pytest
import torch
import torch.nn.functional as F

from src.augmentation import (
    method_name,
    mixed_target,
    mixup_smoothing_loss,
    smooth,
    soft_cross_entropy,
)
from src.data.crop_flip import random_crop, random_hflip

K = 7


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, K, generator=g)
    y = torch.randint(0, K, (16,), generator=g)
    perm = torch.randperm(16, generator=g)
    return logits, y, perm


@pytest.mark.parametrize("lam,eps", [(1.0, 0.0), (0.3, 0.0), (1.0, 0.2), (0.7, 0.1), (0.5, 0.5)])
def test_targets_sum_to_one_and_are_non_negative(batch, lam, eps):
    _, y, perm = batch
    t = mixed_target(y, perm, lam, eps, K)
    assert torch.allclose(t.sum(-1), torch.ones(len(y)))
    assert (t >= 0).all()


def test_smoothing_maps_one_hot_to_documented_values():
    t = smooth(F.one_hot(torch.tensor([2]), 5).float(), 0.1)
    assert torch.allclose(t, torch.tensor([[0.02, 0.02, 0.92, 0.02, 0.02]]))


@pytest.mark.parametrize("lam,eps", [(0.3, 0.1), (0.9, 0.25), (0.5, 0.05)])
def test_smoothing_then_mixing_equals_mixing_then_smoothing(batch, lam, eps):
    _, y, perm = batch
    onehot = F.one_hot(y, K).float()
    mix_then_smooth = smooth(lam * onehot + (1 - lam) * onehot[perm], eps)
    smooth_then_mix = lam * smooth(onehot, eps) + (1 - lam) * smooth(onehot[perm], eps)
    assert torch.allclose(mix_then_smooth, smooth_then_mix, atol=1e-7)
    assert torch.allclose(mixed_target(y, perm, lam, eps, K), mix_then_smooth)


@pytest.mark.parametrize("lam,eps", [(1.0, 0.0), (0.4, 0.0), (1.0, 0.3), (0.6, 0.15)])
def test_training_loss_equals_soft_cross_entropy_on_explicit_target(batch, lam, eps):
    logits, y, perm = batch
    loss = mixup_smoothing_loss(logits, y, y[perm], torch.tensor(lam), torch.tensor(eps))
    expected = soft_cross_entropy(logits, mixed_target(y, perm, lam, eps, K))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_alpha_zero_eps_zero_is_plain_cross_entropy(batch):
    logits, y, _ = batch
    loss = mixup_smoothing_loss(logits, y, y, torch.tensor(1.0), torch.tensor(0.0))
    assert torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-6)


def test_smoothing_loss_matches_torch_label_smoothing(batch):
    logits, y, _ = batch
    loss = mixup_smoothing_loss(logits, y, y, torch.tensor(1.0), torch.tensor(0.2))
    assert torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=0.2), atol=1e-6)


def test_gradients_of_fast_loss_match_explicit_target(batch):
    logits, y, perm = batch
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    mixup_smoothing_loss(a, y, y[perm], torch.tensor(0.35), torch.tensor(0.1)).backward()
    soft_cross_entropy(b, mixed_target(y, perm, 0.35, 0.1, K)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


@pytest.mark.parametrize("alpha,eps,name", [(0, 0, "none"), (0.2, 0, "mixup"),
                                            (0, 0.1, "smoothing"), (1, 0.1, "mixup_smoothing")])
def test_method_name(alpha, eps, name):
    assert method_name(alpha, eps) == name


def test_random_crop_shifts_content_within_padding():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert (out.sum((1, 2, 3)) == 1).all()  # a shift of at most 2 keeps the pixel in view
    assert rows.min() >= 1 and rows.max() <= 5 and cols.min() >= 1 and cols.max() <= 5
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # offsets differ per image


def test_random_crop_without_padding_is_identity():
    x = torch.rand(4, 3, 5, 5)
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)


def test_random_hflip_flips_about_half_exactly():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4).repeat(50, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(1))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped ^ same).all()
    assert 25 < int(flipped.sum()) < 75
