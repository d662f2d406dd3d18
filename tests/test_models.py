"""Tests for src.models: shapes, gradients, reference parameter counts and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.models import MODELS, build_model, model_keys

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Small settings of every model, so that each forward/backward takes milliseconds.
SMALL = {
    "mlp": {"hidden_sizes": [16, 8], "dropout": 0.1},
    "cnn": {"channels": [8, 16, 16], "dropout": 0.1},
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1, "dropout": 0.1},
    "lstm": {"hidden_size": 8, "num_layers": 2, "bidirectional": True, "dropout": 0.1},
}
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, **extra) -> dict:
    return {"name": name, **SMALL[name], **extra}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(small(name), shape, 10)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 9])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(MODELS))
def test_num_classes_and_channels_last(name: str) -> None:
    model = build_model(small(name), (3, 8, 8), 100).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert out.shape == (2, 100)
    cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, out, rtol=1e-4, atol=1e-5)


def test_builds_on_meta_device() -> None:
    # src/validate.py checks configs this way: no memory, no compute.
    with torch.device("meta"):
        for name in MODELS:
            model = build_model(small(name), (1, 28, 28), 7)
            assert model(torch.empty(2, 1, 28, 28)).shape == (2, 7)


def preact18_reference_count(c: int, k: int, w: int = 64, stem_bn: bool = True) -> int:
    """Parameters of mixup-cifar10's ResNet18 (PreActBlock, [2,2,2,2]), counted by hand."""
    total = c * w * 9 + (2 * w if stem_bn else 0)  # stem conv (+ BN in Mixup's code)
    c_in = w
    for c_out, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
        for i, s in enumerate((stride, 1)):
            cin = c_in if i == 0 else c_out
            total += 2 * cin + cin * c_out * 9 + 2 * c_out + c_out * c_out * 9  # BN conv BN conv
            total += cin * c_out if (s != 1 or cin != c_out) else 0  # 1x1 projection
        c_in = c_out
    return total + 8 * w * k + k  # linear head


def test_preact_resnet18_matches_mixup_reference() -> None:
    # kuangliu/pytorch-cifar's PreActResNet18 (no stem BN) has the often-quoted 11,171,146;
    # facebookresearch/mixup-cifar10's ResNet18 adds a stem BN: 128 more.
    assert preact18_reference_count(3, 10, stem_bn=False) == 11_171_146
    assert preact18_reference_count(3, 10) == 11_171_274
    model = build_model({"name": "preact_resnet18", "width": 64}, (3, 32, 32), 10)
    assert n_params(model) == 11_171_274
    model = build_model({"name": "preact_resnet18", "width": 8}, (1, 28, 28), 100)
    assert n_params(model) == preact18_reference_count(1, 100, w=8)


def wrn_reference_count(depth: int, k: int, c: int, classes: int) -> int:
    """Parameters of WRN-depth-k (Zagoruyko & Komodakis 2016), counted by hand."""
    n, total, c_in = (depth - 4) // 6, c * 16 * 9, 16
    for c_out in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            cin = c_in if i == 0 else c_out
            total += 2 * cin + cin * c_out * 9 + 2 * c_out + c_out * c_out * 9
            total += cin * c_out if cin != c_out else 0
        c_in = c_out
    return total + 2 * c_in + c_in * classes + classes  # final BN + head


def test_wide_resnet_28_10_param_count() -> None:
    assert wrn_reference_count(28, 10, 3, 10) == 36_479_194
    model = build_model({"name": "wide_resnet"}, (3, 32, 32), 10)  # no forward: it is big
    assert n_params(model) == 36_479_194
    model = build_model(small("wide_resnet"), (1, 8, 8), 5)
    assert n_params(model) == wrn_reference_count(10, 1, 1, 5)


def test_yaml_configs_match_builder_defaults() -> None:
    for name in MODELS:
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg.name == name
        keys = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "name"}
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in model_keys(name).items()}
        assert keys == defaults


def test_accepts_dictconfig() -> None:
    cfg = OmegaConf.create({"name": "cnn", "channels": [4, 8], "dropout": 0.0})
    assert build_model(cfg, (1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"name": "resnet50"}, "model.name"),
        ({}, "model.name"),
        ({"name": "wide_resnet", "depth": 27}, "model.depth"),
        ({"name": "wide_resnet", "depth": 4}, "model.depth"),
        ({"name": "wide_resnet", "widen_factor": 0}, "model.widen_factor"),
        ({"name": "mlp", "hidden_size": 3}, "model.hidden_size"),
        ({"name": "mlp", "hidden_sizes": [8, -1]}, "model.hidden_sizes"),
        ({"name": "mlp", "hidden_sizes": []}, "model.hidden_sizes"),
        ({"name": "cnn", "dropout": 1.0}, "model.dropout"),
        ({"name": "cnn", "dropout": -0.1}, "model.dropout"),
        ({"name": "preact_resnet18", "width": 8.5}, "model.width"),
        ({"name": "lstm", "bidirectional": "yes"}, "model.bidirectional"),
        ({"name": "lstm", "num_layers": True}, "model.num_layers"),
    ],
)
def test_config_errors_name_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(cfg, (1, 8, 8), 10)
    assert err.value.key == key
    assert key in str(err.value)


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(ConfigError, match="hidden_sizes") as err:
        build_model({"name": "mlp", "widht": 3}, (1, 8, 8), 10)
    assert err.value.key == "model.widht"


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_reads_rows(bidirectional: bool) -> None:
    torch.manual_seed(0)
    cfg = {"name": "lstm", "hidden_size": 8, "bidirectional": bidirectional}
    model = build_model(cfg, (2, 6, 5), 4).eval()
    assert model.lstm.input_size == 2 * 5  # a step is one row of C*W values
    x = torch.randn(1, 2, 6, 5)
    base = model(x)
    for row in (0, 5):  # the first and the last row both reach the output
        y = x.clone()
        y[:, :, row] += 1.0
        assert not torch.allclose(model(y), base)
