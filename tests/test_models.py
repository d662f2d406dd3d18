"""Tests for src.models: shapes, gradients, reference parameter counts, config errors, and the
Manifold Mixup hooks (stages, bit-identity without mixing, functional_call under vmap)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from src.errors import ConfigError
from src.models import MODELS, build_model, mix_layers, model_keys, vmappable

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Small settings of every model, so that each forward/backward takes milliseconds.
SMALL = {
    "mlp": {"hidden_sizes": [16, 8], "dropout": 0.1},
    "cnn": {"channels": [8, 16, 16], "dropout": 0.1},
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1, "dropout": 0.1},
    "lstm": {"hidden_size": 8, "num_layers": 2, "bidirectional": True, "dropout": 0.1},
    "gru": {"hidden_size": 8, "num_layers": 2, "bidirectional": True, "dropout": 0.1},
    "vit": {"patch_size": 4, "width": 16, "depth": 2, "heads": 2, "mlp_ratio": 2, "dropout": 0.1},
}
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, **extra) -> dict:
    return {"name": name, **SMALL[name], **extra}


def test_small_settings_cover_every_model() -> None:
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name: str, shape: tuple[int, int, int], classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(small(name), shape, classes)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    F.cross_entropy(out, torch.tensor([0, 1, classes - 1])).backward()
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
    # src/config/validate.py checks configs this way: no memory, no compute.
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


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_builds_on_digits_and_cifar(path: Path) -> None:
    # Variants such as cnn_small.yaml name a registered model and only its keys; the
    # defaults work on the bundled 8x8 digits and on 3x32x32 images.
    cfg = OmegaConf.load(path)
    with torch.device("meta"):
        for shape in ((1, 8, 8), (3, 32, 32)):
            assert build_model(cfg, shape, 10)(torch.empty(2, *shape)).shape == (2, 10)


def test_cnn_small_is_the_quickstart_convnet() -> None:
    # The quickstart's runs were trained with exactly this model before it had its own file.
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "cnn_small.yaml"))
    assert cfg == {"name": "cnn", "channels": [16, 32], "dropout": 0.0}


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
        ({"name": "gru", "bidirectional": 1}, "model.bidirectional"),
        ({"name": "gru", "hidden_size": 0}, "model.hidden_size"),
        ({"name": "gru", "patch_size": 2}, "model.patch_size"),
        ({"name": "vit", "patch_size": 3}, "model.patch_size"),
        ({"name": "vit", "patch_size": 16}, "model.patch_size"),
        ({"name": "vit", "patch_size": 0}, "model.patch_size"),
        ({"name": "vit", "heads": 3}, "model.heads"),
        ({"name": "vit", "heads": 0}, "model.heads"),
        ({"name": "vit", "mlp_ratio": 0}, "model.mlp_ratio"),
        ({"name": "vit", "mlp_ratio": 2.5}, "model.mlp_ratio"),
        ({"name": "vit", "depth": 0}, "model.depth"),
        ({"name": "vit", "width": -4}, "model.width"),
        ({"name": "vit", "channels": [8]}, "model.channels"),
        ({"name": ["vit"]}, "model.name"),
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


@pytest.mark.parametrize(
    ("shape", "patch", "allowed"),
    [((1, 8, 8), 3, [1, 2, 4, 8]), ((1, 28, 28), 8, [1, 2, 4, 7, 14, 28]),
     ((3, 32, 32), 7, [1, 2, 4, 8, 16, 32]), ((1, 12, 8), 8, [1, 2, 4])],
)
def test_vit_patch_size_must_divide_the_image(shape, patch, allowed) -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"name": "vit", "patch_size": patch}, shape, 10)
    assert err.value.key == "model.patch_size"
    assert err.value.value == patch
    assert str(allowed) in str(err.value)
    for p in allowed:  # and every listed divisor builds
        with torch.device("meta"):
            build_model({"name": "vit", "patch_size": p, "width": 8, "heads": 2}, shape, 10)


def test_vit_heads_must_divide_width() -> None:
    with pytest.raises(ConfigError, match=r"\[1, 2, 3, 4, 6, 8, 12, 24\]") as err:
        build_model({"name": "vit", "width": 24, "heads": 5}, (1, 8, 8), 10)
    assert err.value.key == "model.heads"


def test_vit_tokens_and_class_token() -> None:
    torch.manual_seed(0)
    cfg = {"name": "vit", "patch_size": 4, "width": 8, "depth": 1, "heads": 2}
    model = build_model(cfg, (3, 32, 32), 10).eval()
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 8)  # 64 patches and the class token
    x = torch.randn(2, 3, 32, 32)
    base = model(x)
    for row, col in ((0, 0), (31, 31)):  # the first and the last patch both reach the head
        y = x.clone()
        y[:, :, row, col] += 1.0
        assert not torch.allclose(model(y), base)
    # Samples do not attend to each other: each row of the batch is its own image.
    torch.testing.assert_close(model(x[:1]), base[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(("name", "cell"), [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)])
def test_recurrent_models_read_rows(name: str, cell: type, bidirectional: bool) -> None:
    torch.manual_seed(0)
    cfg = {"name": name, "hidden_size": 8, "bidirectional": bidirectional}
    model = build_model(cfg, (2, 6, 5), 4).eval()
    assert type(model.rnn) is cell and model.rnn.bidirectional == bidirectional
    assert model.rnn.input_size == 2 * 5  # a step is one row of C*W values
    assert model.head.in_features == 8 * (2 if bidirectional else 1)
    x = torch.randn(1, 2, 6, 5)
    base = model(x)
    for row in (0, 5):  # the first and the last row both reach the output
        y = x.clone()
        y[:, :, row] += 1.0
        assert not torch.allclose(model(y), base)


# --------------------------------------------------------------------- Manifold Mixup hooks

def reference_forward(name: str, m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each model's forward as it was written before it had mixing stages."""
    if name == "mlp":
        return m.net(x)
    if name == "cnn":
        return m.head(m.dropout(m.pool(m.features(x)).flatten(1)))
    if name == "preact_resnet18":
        return m.linear(m.pool(m.layers(F.relu(m.bn1(m.conv1(x))))).flatten(1))
    if name == "wide_resnet":
        return m.linear(m.pool(F.relu(m.bn(m.blocks(m.conv1(x))))).flatten(1))
    b, c, h, w = x.shape  # lstm, gru
    _, state = m.rnn(x.permute(0, 2, 1, 3).reshape(b, h, c * w))
    h_n = state[0] if isinstance(state, tuple) else state
    return m.head(m.dropout(h_n[-m.directions:].transpose(0, 1).reshape(b, -1)))


def seeded(fn, *args, **kwargs) -> torch.Tensor:
    """fn(*args, **kwargs) with the global generator reset first (the same dropout masks)."""
    torch.manual_seed(1)
    return fn(*args, **kwargs)


def stages() -> list[tuple[str, str]]:
    return [(name, stage) for name in sorted(MODELS) for stage in mix_layers(name)]


@pytest.mark.parametrize("name", ["mlp", "cnn", "preact_resnet18", "wide_resnet", "lstm", "gru"])
def test_without_mixing_the_forward_is_bit_identical(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(name), (1, 8, 8), 10).train()  # dropout on: same masks needed
    x = torch.randn(4, 1, 8, 8)
    expected = seeded(reference_forward, name, model, x)
    assert torch.equal(seeded(model, x), expected)
    assert torch.equal(seeded(model, x, mix_at=None, mixer=torch.zeros_like), expected)
    for stage in mix_layers(name):  # an identity mixer anywhere changes nothing either
        assert torch.equal(seeded(model, x, mix_at=stage, mixer=lambda h: h), expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mix_layers_are_the_class_stages(name: str) -> None:
    layers = mix_layers(name)
    assert layers == MODELS[name].MIX_LAYERS
    assert layers[0] == "input" and len(set(layers)) == len(layers) >= 2


def test_mix_layers_of_an_unknown_model() -> None:
    with pytest.raises(ConfigError) as err:
        mix_layers("resnet50")
    assert err.value.key == "model.name"


# The hidden state each stage hands to the mixer, for SMALL models on (4, 1, 8, 8) input.
STAGE_SHAPES = {
    "mlp": {"input": (4, 1, 8, 8), "hidden1": (4, 16), "features": (4, 8)},
    "cnn": {"input": (4, 1, 8, 8), "block1": (4, 8, 4, 4), "features": (4, 16)},
    "preact_resnet18": {"input": (4, 1, 8, 8), "layer1": (4, 8, 8, 8), "layer2": (4, 16, 4, 4),
                        "layer3": (4, 32, 2, 2), "layer4": (4, 64, 1, 1)},
    "wide_resnet": {"input": (4, 1, 8, 8), "group1": (4, 16, 8, 8), "group2": (4, 32, 4, 4),
                    "group3": (4, 64, 2, 2)},
    "lstm": {"input": (4, 1, 8, 8), "features": (4, 16)},
    "gru": {"input": (4, 1, 8, 8), "features": (4, 16)},
    "vit": {"input": (4, 1, 8, 8), "embed": (4, 5, 16), "block1": (4, 5, 16),
            "features": (4, 16)},
}


@pytest.mark.parametrize(("name", "stage"), stages())
def test_the_mixer_runs_once_on_the_named_stage(name: str, stage: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(name), (1, 8, 8), 10).eval()
    x1, x2 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    seen: list[torch.Tensor] = []

    def capture(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.clone())
        return h

    model(x2, mix_at=stage, mixer=capture)
    assert len(seen) == 1 and tuple(seen[0].shape) == STAGE_SHAPES[name][stage]
    # Handing x1's forward the stage output of x2 gives x2's logits: the mixer's result is
    # all that the rest of the network reads, and the stages before it ran on x1.
    swapped = model(x1, mix_at=stage, mixer=lambda h: seen[0])
    torch.testing.assert_close(swapped, model(x2), rtol=0, atol=0)
    assert not torch.allclose(swapped, model(x1))
    # Zeroing the stage: the output no longer depends on the input.
    zeroed = model(x1, mix_at=stage, mixer=torch.zeros_like)
    torch.testing.assert_close(zeroed, model(x2, mix_at=stage, mixer=torch.zeros_like))
    if stage == "input":
        assert torch.equal(zeroed, model(torch.zeros_like(x1)))
    if stage == "features":  # the head reads zeros: its bias is the output
        head = model.net[-1] if name == "mlp" else model.head
        assert torch.equal(zeroed, head.bias.expand(4, 10))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_mix_arguments(name: str) -> None:
    model = build_model(small(name), (1, 8, 8), 10)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="not a stage of this model") as err:
        model(x, mix_at="layer9", mixer=torch.zeros_like)
    assert all(stage in str(err.value) for stage in mix_layers(name))
    with pytest.raises(ValueError, match="needs a mixer"):
        model(x, mix_at="input")


def mixup_at(lam: torch.Tensor):
    """A Manifold Mixup mixer (Verma et al. 2019) with a fixed permutation (the reversal)."""
    return lambda h: lam * h + (1 - lam) * h.flip(0)


def vmap_models(name: str, train: bool) -> list[torch.nn.Module]:
    keys = model_keys(name)
    cfg = small(name, **({"dropout": 0.0} if "dropout" in keys else {}))  # no random masks
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg, (1, 8, 8), 10).train(train))
    return models


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("name", "stage"), [s for s in stages() if vmappable(s[0])])
def test_vmapped_copies_match_separate_calls(name: str, stage: str, train: bool) -> None:
    # How src.training.trainer.StackedTrainer trains several seeds: stacked parameters and
    # buffers, one base module on the meta device, vmap over functional_call; a mixer per copy.
    models = vmap_models(name, train)
    params, buffers = stack_module_state(models)
    base = vmap_models(name, train)[0].to("meta")
    x = torch.randn(2, 4, 1, 8, 8)
    lam = torch.tensor([0.3, 0.8])

    def call(p, b, xk, lk):
        kwargs = {"mix_at": stage, "mixer": mixup_at(lk)}
        return functional_call(base, (p, b), (xk,), kwargs)

    together = vmap(call, randomness="different")(params, buffers, x, lam)
    separate = torch.stack([m(x[k], mix_at=stage, mixer=mixup_at(lam[k]))
                            for k, m in enumerate(models)])
    torch.testing.assert_close(together, separate, rtol=1e-6, atol=1e-6)
    if train:  # BatchNorm's running statistics are updated per copy, as separate runs do
        for key, value in buffers.items():
            expected = torch.stack([dict(m.named_buffers())[key] for m in models])
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(together, vmap(call)(params, buffers, x, torch.ones(2)))


@pytest.mark.parametrize("name", [n for n in sorted(MODELS) if not vmappable(n)])
def test_models_marked_not_vmappable_cannot_be_vmapped(name: str) -> None:
    models = vmap_models(name, train=False)
    params, buffers = stack_module_state(models)
    with pytest.raises(RuntimeError, match="[Bb]atching rule"):
        vmap(lambda p, b, x: functional_call(models[0], (p, b), (x,)))(
            params, buffers, torch.randn(2, 4, 1, 8, 8))
