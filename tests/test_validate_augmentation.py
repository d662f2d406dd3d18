"""The augmentation keys are refused before training, with the one-paragraph error naming the
key, the value and what is allowed; good combinations pass."""

import pytest

from src.config.validate import validate
from src.errors import ConfigError
from tests.conftest import make_cfg

# (overrides, key the message must name, text the message must hold)
BAD = [
    (["augmentation.smoothing=1.0"], "augmentation.smoothing", "< 1"),
    (["augmentation.smoothing=1.5"], "augmentation.smoothing", "< 1"),
    (["augmentation.smoothing=-inf"], "augmentation.smoothing", "finite"),
    (["augmentation.smoothing=nan"], "augmentation.smoothing", "finite"),
    (["augmentation.smoothing=abc"], "augmentation.smoothing", "finite"),
    (["augmentation.smoothing_to=some"], "augmentation.smoothing_to", "others"),
    # digits has K = 10 classes: over the others, eps must stay below 9/10
    (["augmentation.smoothing_to=others", "augmentation.smoothing=0.9"],
     "augmentation.smoothing", "(K - 1) / K = 0.9"),
    (["augmentation.smoothing_start_epoch=-1"], "augmentation.smoothing_start_epoch", ">= 0"),
    (["augmentation.smoothing_start_epoch=1.5"], "augmentation.smoothing_start_epoch", ">= 0"),
    (["augmentation.smoothing=0.1", "augmentation.smoothing_start_epoch=3",
      "trainer.epochs=3"], "augmentation.smoothing_start_epoch", "trainer.epochs = 3"),
    (["augmentation.cutmix_alpha=-1"], "augmentation.cutmix_alpha", ">= 0"),
    (["augmentation.cutmix_alpha=inf"], "augmentation.cutmix_alpha", "finite"),
    (["augmentation.mixup_alpha=inf"], "augmentation.mixup_alpha", "finite"),
    (["augmentation.cutmix_minmax=[0.8,0.2]"], "augmentation.cutmix_minmax", "ordered pair"),
    (["augmentation.cutmix_minmax=[0,0.5]"], "augmentation.cutmix_minmax", "0 < min"),
    (["augmentation.cutmix_minmax=[0.2,1.5]"], "augmentation.cutmix_minmax", "max <= 1"),
    (["augmentation.cutmix_minmax=[0.5]"], "augmentation.cutmix_minmax", "pair"),
    (["augmentation.cutmix_minmax=0.5"], "augmentation.cutmix_minmax", "pair"),
    # 8x8 digits: int(8 * 0.3) == int(8 * 0.35), no box side to draw
    (["augmentation.cutmix_alpha=1", "augmentation.cutmix_minmax=[0.3,0.35]"],
     "augmentation.cutmix_minmax", "8x8"),
    (["augmentation.correct_lam=maybe"], "augmentation.correct_lam", "true or false"),
    (["augmentation.mix_prob=1.5"], "augmentation.mix_prob", "[0, 1]"),
    (["augmentation.mix_prob=-0.1"], "augmentation.mix_prob", "[0, 1]"),
    (["augmentation.switch_prob=2"], "augmentation.switch_prob", "[0, 1]"),
    (["augmentation.mix_mode=row"], "augmentation.mix_mode", "'elem'"),
    (["augmentation.pairing=random"], "augmentation.pairing", "'flip'"),
    (["augmentation.mix_layer=layer9"], "augmentation.mix_layer", "'block1'"),
    (["model=mlp", "augmentation.mix_layer=block1"], "augmentation.mix_layer", "'hidden1'"),
    (["augmentation=cutmix", "augmentation.mix_layer=block1"], "augmentation.mix_layer",
     "CutMix"),
    (["augmentation.name=gls"], "augmentation.name", "cutmix"),
]


@pytest.mark.parametrize("overrides,key,text", BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_bad_augmentation_value_names_key_value_and_allowed(overrides, key, text):
    cfg = make_cfg(overrides, run_dir="/nonexistent/never-written")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert msg.startswith(f"{key}="), msg
    assert "not valid:" in msg and text in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("overrides", [
    ["augmentation=smoothing", "augmentation.smoothing=-2"],
    ["augmentation=smoothing", "augmentation.smoothing=-0.6", "augmentation.smoothing_to=others"],
    ["augmentation.smoothing_to=others", "augmentation.smoothing=0.89"],
    ["augmentation.smoothing=0", "augmentation.smoothing_start_epoch=100"],  # never smooths
    ["augmentation=cutmix", "augmentation.cutmix_minmax=[0.2,0.8]", "augmentation.mix_mode=elem"],
    ["augmentation=mixup_cutmix", "augmentation.mix_prob=0.5", "augmentation.pairing=flip"],
    ["augmentation=manifold_mixup"],
    ["augmentation=manifold_mixup", "model=mlp", "augmentation.mix_layer=hidden1"],
    ["augmentation=mixup_smoothing", "augmentation.mix_mode=pair"],
], ids=lambda o: " ".join(o))
def test_good_augmentations_pass(overrides):
    validate(make_cfg(overrides, run_dir="/nonexistent"))
