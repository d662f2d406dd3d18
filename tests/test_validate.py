"""Bad input fails before training with a message naming the key, the value and what is allowed."""

import pytest

from src.config.validate import validate
from src.errors import ConfigError
from tests.conftest import make_cfg

# (overrides, key the message must name)
BAD = [
    (["augmentation.smoothing=1.0"], "augmentation.smoothing"),
    (["augmentation.smoothing=abc"], "augmentation.smoothing"),
    (["augmentation.mixup_alpha=-1"], "augmentation.mixup_alpha"),
    (["augmentation.mixup_alpha=true"], "augmentation.mixup_alpha"),
    (["noise=symmetric", "noise.rate=1.5"], "noise.rate"),
    (["noise=symmetric", "noise.rate=-0.2"], "noise.rate"),
    (["noise=symmetric", "noise.seed=-1"], "noise.seed"),
    (["noise=symmetric", "noise.include_true_class=maybe"], "noise.include_true_class"),
    (["noise=human", "noise.label_set=best"], "noise.label_set"),
    (["trainer.batch_size=1"], "trainer.batch_size"),
    (["trainer.batch_size=0.5"], "trainer.batch_size"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.epochs=ten"], "trainer.epochs"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer.lr=-0.1"], "trainer.lr"),
    (["trainer.momentum=1.0"], "trainer.momentum"),
    (["trainer.weight_decay=-1"], "trainer.weight_decay"),
    (["trainer.optimizer=adam"], "trainer.optimizer"),
    (["trainer.schedule=linearly"], "trainer.schedule"),
    (["trainer.decay_start=-1"], "trainer.decay_start"),
    (["trainer.beta1_after_decay=1.0"], "trainer.beta1_after_decay"),
    (["trainer.beta1_after_decay=0.1"], "trainer.beta1_after_decay"),  # with sgd
    (["trainer.steps_per_epoch=0"], "trainer.steps_per_epoch"),
    (["trainer.steps_per_epoch=2.5"], "trainer.steps_per_epoch"),
    (["trainer.normalize=maybe"], "trainer.normalize"),
    (["trainer.last_k=0"], "trainer.last_k"),
    (["noise=symmetric", "noise.sampling=bernoulli"], "noise.sampling"),
    (["noise=pairflip", "noise.sampling=random"], "noise.sampling"),
    (["trainer.amp=fp8"], "trainer.amp"),
    (["trainer.gamma=0"], "trainer.gamma"),
    (["trainer.eval_every=0"], "trainer.eval_every"),
    (["trainer.seed=-3"], "trainer.seed"),
    (["trainer.milestones=[0.5,-1]"], "trainer.milestones"),
    (["trainer.compile=yes"], "trainer.compile"),
    (["trainer.compile=fastest"], "trainer.compile"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction"),
    (["dataset.num_classes=1"], "dataset.num_classes"),
    (["dataset.image_shape=[1,8]"], "dataset.image_shape"),
    (["dataset.mean=[0.1,0.2]"], "dataset.mean"),
    (["dataset.augment.crop_padding=-2"], "dataset.augment.crop_padding"),
    (["dataset=npz"], "dataset.npz"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    (["model.channels=[0,8]"], "model.channels"),
    (["model=mlp", "model.dropout=1.5"], "model.dropout"),
    (["model=wide_resnet", "model.depth=27"], "model.depth"),
    (["+model.width_multiplier=2"], "model.width_multiplier"),
    (["+trainer.lr_max=2"], "trainer.lr_max"),
    (["skip_completed=perhaps"], "skip_completed"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_names_key_value_and_allowed(overrides, key):
    cfg = make_cfg(overrides, run_dir="/nonexistent/never-written")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert msg.startswith(f"{key}="), msg
    assert "not valid:" in msg


def test_normalisation_must_have_one_value_per_channel():
    cfg = make_cfg(["dataset.image_shape=[3,8,8]"], run_dir="/nonexistent")
    with pytest.raises(ConfigError, match=r"dataset\.mean"):
        validate(cfg)


def test_good_configs_pass():
    for overrides in ([], ["augmentation=mixup_smoothing"], ["noise=symmetric", "model=mlp"],
                      ["model=lstm", "logger=wandb", "logger.mode=offline"]):
        validate(make_cfg(overrides, run_dir="/nonexistent"))


def test_an_added_misspelt_nested_key_suggests_the_known_one(tmp_path):
    """`+trainer.epoch=3` composes (the + adds it) and is refused with the key it meant."""
    with pytest.raises(ConfigError, match=r"trainer\.epoch=3.*did you mean epochs\?"):
        validate(make_cfg(["+trainer.epoch=3"], run_dir=tmp_path))
