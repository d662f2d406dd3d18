"""Dataset loading: bundled digits, npz archives (plain and JPEG scans), clear errors."""

import io

import numpy as np
import pytest

from src.data import arrays as data
from src.data.arrays import load_arrays, load_npz, stratified_split
from src.errors import ConfigError


def _cfg(**kw):
    base = {"name": "npz", "num_classes": 3, "image_shape": [1, 6, 6], "npz": None,
            "root": None, "download": False}
    return {**base, **kw}


@pytest.fixture(autouse=True)
def _fresh_cache():
    data._CACHE.clear()
    yield
    data._CACHE.clear()


def _write_npz(path, n=12, shape=(6, 6), k=3, dtype=np.uint8):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, *shape)).astype(dtype),
             y_train=np.arange(n) % k, x_test=rng.integers(0, 256, (n // 2, *shape)).astype(dtype),
             y_test=np.arange(n // 2) % k)


def test_digits_are_bundled_uint8_with_a_fixed_split():
    a = load_arrays({"name": "digits", "num_classes": 10, "image_shape": [1, 8, 8]})
    assert a.x_train.shape == (1437, 8, 8, 1) and a.x_test.shape == (360, 8, 8, 1)
    assert a.x_train.dtype == np.uint8 and a.x_train.max() == 255
    assert np.bincount(a.y_test).min() >= 35  # stratified: every class in the test split


def test_npz_grayscale_channels_last(tmp_path):
    _write_npz(tmp_path / "d.npz")
    a = load_arrays(_cfg(npz=str(tmp_path / "d.npz")))
    assert a.x_train.shape == (12, 6, 6, 1) and a.y_train.dtype == np.int64


def test_npz_is_cached_per_process(tmp_path):
    _write_npz(tmp_path / "d.npz")
    cfg = _cfg(npz=str(tmp_path / "d.npz"))
    assert load_arrays(cfg) is load_arrays(cfg)


def test_npz_missing_file_names_key_and_path(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.npz=.*nope\.npz"):
        load_arrays(_cfg(npz=str(tmp_path / "nope.npz")))


def test_npz_missing_arrays_are_named(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 6, 6), np.uint8))
    with pytest.raises(ConfigError, match="missing.*x_test"):
        load_npz(tmp_path / "d.npz")


def test_image_shape_mismatch_is_reported(tmp_path):
    _write_npz(tmp_path / "d.npz", shape=(5, 5))
    with pytest.raises(ConfigError, match=r"dataset\.image_shape"):
        load_arrays(_cfg(npz=str(tmp_path / "d.npz")))


def test_float_images_are_rejected(tmp_path):
    _write_npz(tmp_path / "d.npz", dtype=np.float32)
    with pytest.raises(ConfigError, match="uint8"):
        load_arrays(_cfg(npz=str(tmp_path / "d.npz")))


def test_labels_beyond_num_classes_are_rejected(tmp_path):
    _write_npz(tmp_path / "d.npz", k=5)
    with pytest.raises(ConfigError, match=r"dataset\.num_classes"):
        load_arrays(_cfg(npz=str(tmp_path / "d.npz")))


def test_jpeg_scan_archive_is_decoded(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        blobs.append(buf.getvalue())
    # The archive layout: one shared header, per-image scans, EOI appended on decode.
    sos = blobs[0].index(b"\xff\xda")
    header = blobs[0][:sos]
    assert all(b[:sos] == header for b in blobs)
    scans = [b[sos:-2] for b in blobs]
    offsets = np.cumsum([0] + [len(s) for s in scans])
    flat = np.frombuffer(b"".join(scans), np.uint8)
    np.savez(tmp_path / "c.npz", jpeg_header=np.frombuffer(header, np.uint8),
             train_scans=flat, train_offsets=offsets, test_scans=flat, test_offsets=offsets,
             y_train=np.array([0, 1, 2]), y_test=np.array([2, 1, 0]))
    a = load_npz(tmp_path / "c.npz")
    assert a.x_train.shape == (3, 32, 32, 3) and a.x_train.dtype == np.uint8
    direct = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    assert np.array_equal(a.x_train, direct)  # the same pixels as decoding each whole JPEG


def test_torchvision_missing_files_name_the_path(tmp_path):
    cfg = _cfg(name="mnist", image_shape=[1, 28, 28], num_classes=10, root=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"dataset\.root=.*download=true"):
        load_arrays(cfg)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match=r"dataset\.name='imagenet'"):
        load_arrays(_cfg(name="imagenet"))


def test_stratified_split_holds_out_each_class():
    y = np.repeat(np.arange(4), 50)
    tr, va = stratified_split(y, 0.2, seed=3)
    assert len(va) == 40 and np.bincount(y[va]).tolist() == [10] * 4
    assert not set(tr) & set(va) and len(tr) + len(va) == 200
    assert np.array_equal(va, stratified_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(va, stratified_split(y, 0.2, seed=4)[1])


def test_digits_come_from_the_users_cache_as_scikit_learn_splits_them(tmp_path, monkeypatch):
    """The split is kept per scikit-learn, numpy and bundled file: a later process reads the
    same arrays without importing scikit-learn; a damaged cache file is made again."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    want = data._split_digits()
    cached = data.digits_cache_file()
    assert cached is not None and cached.parent == tmp_path / "lsmix" and not cached.exists()
    first = data._load_digits()
    assert cached.is_file()
    for got in (first, data._load_digits()):
        for k in data.SPLITS:
            assert np.array_equal(getattr(got, k), getattr(want, k))
            assert getattr(got, k).dtype == getattr(want, k).dtype
        assert got.source == want.source
    code = ("import sys; from src.data.arrays import _load_digits; a = _load_digits(); "
            "assert 'sklearn' not in sys.modules; print(a.x_train.shape)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, env={**__import__("os").environ,
                                          "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(want.x_train.shape)
    cached.write_bytes(b"not an archive")
    again = data._load_digits()
    assert np.array_equal(again.x_test, want.x_test)
    with np.load(cached) as z:  # replaced by the real split
        assert np.array_equal(z["y_train"], want.y_train)


def test_the_digits_cache_is_keyed_by_versions_the_file_and_the_split(monkeypatch):
    mine = data.digits_cache_file()
    monkeypatch.setattr(np, "__version__", "0.0.0")
    assert data.digits_cache_file() != mine
    monkeypatch.undo()

    def split_otherwise():  # another test size: other arrays, so another file
        return None

    monkeypatch.setattr(data, "_split_digits", split_otherwise)
    assert data.digits_cache_file() not in (None, mine)
