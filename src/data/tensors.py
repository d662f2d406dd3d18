"""What a run trains and evaluates on, as tensors on its device.

The whole dataset lives on the training device as uint8 (airbench's design): a batch is an
index gather, and crops, flips and normalisation run over whole batches (src.data.crop_flip,
src.training.trainer). `prepare_data` loads the arrays, injects the label noise, holds out the
noisy validation split and moves everything to the device once per process (a sweep's runs
share the cached images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src import noise as noise_lib
from src.data.arrays import load_arrays, stratified_split
from src.data.subset import subset_indices


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and int64 labels, on the training device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainData:
    """What a run trains and evaluates on; `y_true` is the training labels before noise."""

    train: Split
    test: Split
    y_true: torch.Tensor
    val: Split | None
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    crop_padding: int = 0
    hflip: bool = False


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def to_device(key: tuple, array: np.ndarray, device: torch.device,
              channels_last: bool | None = None) -> torch.Tensor:
    """A numpy array as a tensor on `device`, cached so a sweep moves each dataset once.

    `channels_last` (images only): (N, H, W, C) arrays become (N, C, H, W) tensors in that
    memory layout, made once here rather than copied again by every run. Channels-last is the
    arrays' own order, so on a GPU the images are not copied at all.
    """
    full = key + (str(device), channels_last)
    if full not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 16:
            _DEVICE_CACHE.clear()
        t = torch.from_numpy(array).to(device)
        if channels_last is not None:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            t = t.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        _DEVICE_CACHE[full] = t
    return _DEVICE_CACHE[full]


def normalisation(ds: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's per-channel mean and std, shaped to broadcast over (..., C, H, W)."""
    shape = (-1, 1, 1)
    return (torch.tensor(list(ds["mean"]), device=device).view(shape),
            torch.tensor(list(ds["std"]), device=device).view(shape))


def prepare_data(cfg: DictConfig, device: torch.device, channels_last: bool,
                 run_dirs: list[Path]) -> tuple[TrainData, noise_lib.NoiseResult]:
    """Load the dataset, inject label noise (recorded in every run folder), hold out the noisy
    validation split, and move it all to the device."""
    ds = cfg.dataset
    arrays = load_arrays(ds)
    k = int(ds.num_classes)
    noisy = noise_lib.inject_noise(arrays.y_train, k, cfg.noise, dataset=ds.name,
                                   images=arrays.x_train)
    noise_cfg = OmegaConf.to_container(cfg.noise, resolve=True)
    for run_dir in run_dirs:
        noise_lib.save_noise(noisy, run_dir, noise_cfg)
    # The arrays' own identity: src.data.arrays keeps one object per archive content (a changed
    # archive is a new object), so the device copies follow it and never go stale.
    key = (ds.name, id(arrays))
    x_train = to_device(key + ("x_train",), arrays.x_train, device, channels_last)
    x_test = to_device(key + ("x_test",), arrays.x_test, device, channels_last)
    given = torch.from_numpy(noisy.given_labels).to(device)
    true = torch.from_numpy(noisy.true_labels).to(device)
    pool = subset_indices(ds, len(noisy.given_labels), int(cfg.noise.seed))
    pool_labels = noisy.given_labels
    if pool is not None:  # dataset.train_subset: after the noise, before the split
        pool_labels = noisy.given_labels[pool]
        keep = torch.from_numpy(pool).to(device)
        x_train, given, true = x_train[keep], given[keep], true[keep]
    frac, val = float(ds.get("val_fraction", 0.0)), None
    if frac > 0:
        # Stratified on the labels a practitioner has: the noisy ones.
        tr, va = stratified_split(pool_labels, frac, int(ds.get("val_seed", 0)))
        train_idx, val_idx = torch.from_numpy(tr).to(device), torch.from_numpy(va).to(device)
        val = Split(x_train[val_idx], given[val_idx])
        x_train, given, true = x_train[train_idx], given[train_idx], true[train_idx]
    mean, std = normalisation(ds, device)
    data = TrainData(
        train=Split(x_train, given),
        test=Split(x_test, to_device(key + ("y_test",), arrays.y_test, device)),
        y_true=true, val=val, num_classes=k, mean=mean, std=std,
        crop_padding=int(ds.augment.crop_padding), hflip=bool(ds.augment.hflip),
    )
    return data, noisy


def first_samples(data: TrainData, n: int) -> TrainData:
    """The training split cut to its first `n` samples (their labels before noise too);
    validation and test stay whole. trainer.overfit_batches: the same batches every epoch."""
    return replace(data, train=Split(data.train.x[:n], data.train.y[:n]), y_true=data.y_true[:n])
