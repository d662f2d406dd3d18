"""`dataset=NAME paths.data_dir=DIR` finds the offline archive under its real name through the
name map `dataset.archives` (conf/dataset/NAME.yaml), and names every file it tried when none
is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from src.config.validate import validate
from src.data.arrays import DATASETS, load_arrays, local_archive
from src.errors import ConfigError
from src.run.identity import fingerprint, flat_settings
from tests.conftest import CONF, make_cfg

SHARED = Path("/work/shared/data")


def _write(path: Path, shape=(32, 32, 3), k=10) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2 * k, *shape), dtype=np.uint8)
    y = np.arange(2 * k) % k
    np.savez(path, x_train=x, y_train=y, x_test=x[:k], y_test=y[:k])


def _cifar(data_dir: Path):
    return make_cfg(["dataset=cifar10", f"paths.data_dir={data_dir}"]).dataset


@pytest.mark.parametrize("name", [n for n in DATASETS if n not in ("digits", "npz")])
def test_every_downloadable_dataset_maps_its_own_name_to_an_archive(name):
    archives = OmegaConf.load(CONF / "dataset" / f"{name}.yaml").archives
    assert f"{name}.npz" in archives


def test_cifar10_finds_the_jpeg_archive_under_its_real_name(tmp_path):
    _write(tmp_path / "cifar10_jpeg.npz")
    ds = _cifar(tmp_path)
    assert local_archive(ds) == str(tmp_path / "cifar10_jpeg.npz")
    arrays = load_arrays(ds)
    assert arrays.source == str(tmp_path / "cifar10_jpeg.npz") and len(arrays.y_train) == 20


def test_the_first_name_of_the_map_wins(tmp_path):
    for name in ("cifar10.npz", "cifar10_jpeg.npz"):
        _write(tmp_path / name)
    assert local_archive(_cifar(tmp_path)) == str(tmp_path / "cifar10.npz")
    ds = make_cfg(["dataset=cifar10", f"paths.data_dir={tmp_path}",
                   "dataset.archives=[cifar10_jpeg.npz]"]).dataset
    assert local_archive(ds) == str(tmp_path / "cifar10_jpeg.npz")


@pytest.mark.skipif(not (SHARED / "cifar10_jpeg.npz").is_file(), reason="no offline copy here")
def test_the_offline_copy_is_found_as_it_is_named():
    assert local_archive(_cifar(SHARED)) == str(SHARED / "cifar10_jpeg.npz")
    assert local_archive(make_cfg(["dataset=fashion_mnist", f"paths.data_dir={SHARED}"])
                         .dataset) == str(SHARED / "fashion_mnist.npz")


def test_nothing_found_names_every_file_it_tried(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_arrays(_cifar(tmp_path))
    text = str(err.value)
    assert text.startswith("dataset.root=")
    for tried in (tmp_path / "cifar10.npz", tmp_path / "cifar10_jpeg.npz",
                  "cifar-10-batches-py/"):
        assert str(tried) in text
    assert "paths.data_dir" in text and "dataset.npz=PATH" in text and "download=true" in text


def test_an_archive_name_must_be_a_file_name(tmp_path):
    for bad in ("[../cifar10.npz]", "['']", "[1]"):
        cfg = make_cfg(["dataset=cifar10", f"dataset.archives={bad}", "model=cnn"],
                       run_dir=tmp_path)
        with pytest.raises(ConfigError, match=r"dataset\.archives=.*a file name"):
            validate(cfg)


def test_the_name_map_is_no_part_of_a_runs_identity(tmp_path):
    """Where an archive is looked for is not what a run is: old runs keep their fingerprint."""
    cfg = make_cfg(["dataset=mnist", f"paths.data_dir={tmp_path}"], run_dir=tmp_path)
    old = cfg.copy()
    with open_dict(old):
        del old.dataset.archives  # a run recorded before the key existed
    renamed = make_cfg(["dataset=mnist", f"paths.data_dir={tmp_path}",
                        "dataset.archives=[other.npz]"], run_dir=tmp_path)
    assert fingerprint(cfg) == fingerprint(old) == fingerprint(renamed)
    assert not any(k.startswith("dataset.archives") for k in flat_settings(cfg))
