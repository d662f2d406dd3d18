"""Which run this is: its identity fields and the fingerprint of the settings that define
its numbers (not how, or where, it is executed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import ADDED_KEYS, EXECUTION_KEYS, LOCATION_KEYS, REPLICATE_KEYS
from src.run.init_from import INIT_FROM, parent_identity, weights_file

SECTIONS = ("dataset", "model", "augmentation", "noise", "trainer")


def _drop(section: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`section` without the dotted `keys` that belong to it, nor the keys added later that
    hold the value runs had before them (src.config.ADDED_KEYS)."""
    own = {k.split(".", 1)[1] for k in keys if k.startswith(name + ".")}
    return {k: v for k, v in section.items()
            if k not in own and not at_added_default(f"{name}.{k}", v)}


def at_added_default(key: str, value: Any) -> bool:
    """Whether `key` is one added later and holds the value that does what runs did before."""
    return key in ADDED_KEYS and value == ADDED_KEYS[key]


def fingerprint(cfg: DictConfig, inputs: dict[str, dict[str, Any]] | None = None) -> str:
    """Hash of dataset, model, augmentation, noise and trainer settings and of the content of
    every input file (not where it lies); 16 hex digits. `inputs`: the run's input records
    when the caller has them already (input_records)."""
    parts: dict[str, Any] = {k: _drop(OmegaConf.to_container(cfg[k], resolve=True), k,
                                      EXECUTION_KEYS + LOCATION_KEYS) for k in SECTIONS}
    records = input_records(cfg) if inputs is None else inputs
    inputs = {k: v["hash"] for k, v in records.items()}
    if inputs:  # runs that read no file keep the fingerprint they always had
        parts["inputs"] = inputs
    # A run started from another run's weights: that run's identity too (src.run.init_from).
    parents = {k: v["fingerprint"] for k, v in records.items() if "fingerprint" in v}
    if parents:
        parts["parents"] = parents
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_identity(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """The keys that say which run this is (written into results.json and W&B)."""
    # Here, not at the top: the entry point computes fingerprints before torch is imported.
    from src.augmentation import MixSettings, method_name, uniform_mass

    aug, noise = cfg.augmentation, cfg.noise
    eps, smoothing_to = float(aug.smoothing), str(aug.smoothing_to)
    mixing = MixSettings.from_config(aug)
    return {
        "experiment": cfg.task_name,
        "group": group,
        "run_dir": str(cfg.paths.run_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "augmentation": aug.name,
        "method": method_name(mixing.mixup_alpha, eps, cutmix_alpha=mixing.cutmix_alpha,
                              mix_layer=mixing.mix_layer, mix_prob=mixing.mix_prob),
        "mixup_alpha": float(aug.mixup_alpha),
        "smoothing": eps,
        # The convention of eps, and the uniform mass m of (1 - m) y + m / K it amounts to
        # (eps over all classes; eps * K / (K - 1) over the others): comparable across both.
        "smoothing_to": smoothing_to,
        "smoothing_uniform_mass": uniform_mass(eps, smoothing_to, int(cfg.dataset.num_classes)),
        "noise": noise.name,
        "noise_rate": float(noise.rate),
        "noise_seed": int(noise.seed),
        "noise_label_set": noise.get("label_set") if noise.name == "human" else None,
        "seed": int(cfg.trainer.seed),
        "epochs": int(cfg.trainer.epochs),
        "val_fraction": float(cfg.dataset.get("val_fraction", 0.0)),
    }


# ------------------------------------------------------------------ settings and inputs

def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys; an empty mapping is a value of its own (`{}`)."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def flat_settings(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that changes a run's numbers, as dotted keys (results.json `config`):
    the five sections without execution, location and replicate keys (nor empty mappings,
    which set nothing)."""
    left_out = EXECUTION_KEYS + LOCATION_KEYS + REPLICATE_KEYS
    out: dict[str, Any] = {}
    for section in SECTIONS:
        flat = flatten(OmegaConf.to_container(cfg[section], resolve=True), section)
        out.update({k: v for k, v in flat.items()
                    if k not in left_out and v != {} and not at_added_default(k, v)})
    return out


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's whole content, cached per process by (path, size, mtime): a sweep
    hashes each archive once, and a file changed in place is hashed again."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def folder_digest(folder: Path) -> tuple[int, str]:
    """Total size and one hash over every file under `folder` (names and contents)."""
    h, size = hashlib.blake2b(digest_size=16), 0
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + file_digest(p).encode())
        size += p.stat().st_size
    return size, h.hexdigest()


def input_files(cfg: DictConfig) -> dict[str, Path]:
    """The files a run reads, by the config key that names them."""
    out: dict[str, Path] = {}
    if cfg.dataset.get("npz"):
        out["dataset.npz"] = Path(str(cfg.dataset.npz)).expanduser()
    elif cfg.dataset.get("root") and cfg.dataset.name not in ("digits", "npz"):
        out["dataset.root"] = Path(str(cfg.dataset.root)).expanduser()
    if cfg.noise.name == "human" and cfg.noise.get("file"):
        out["noise.file"] = Path(str(cfg.noise.file)).expanduser()
    parent = weights_file(cfg)  # the weights of the run it starts from
    if parent is not None:
        out[INIT_FROM] = parent
    return out


def input_records(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Path, size and content hash of every input file (results.json `inputs`); a file that
    is not there has no hash (loading it fails with its own error)."""
    out = {}
    for key, path in input_files(cfg).items():
        if path.is_file():
            size, digest = path.stat().st_size, file_digest(path)
        elif path.is_dir():
            size, digest = folder_digest(path)
        else:
            size, digest = None, None
        out[key] = {"path": str(path), "size": size, "hash": digest}
        if key == INIT_FROM:  # which run the weights come from: its folder and fingerprint
            out[key].update(parent_identity(cfg))
    return out
