"""The plain reference loop the benchmark compares the suite with.

It trains the way the original Mixup code does (facebookresearch/mixup-cifar10, train.py;
Zhang et al. 2018), rewritten here for the suite's models and arrays: a torchvision-style
Dataset that turns each image into a PIL image and applies per-image transforms (RandomCrop
with padding and RandomHorizontalFlip where the dataset's augmentation config has them, then
ToTensor and Normalize), a shuffling `DataLoader` with worker processes (the original uses 8),
`mixup_data` / `mixup_criterion` mixing with lambda from numpy and a fresh permutation per
batch, label smoothing through `nn.CrossEntropyLoss(label_smoothing=eps)` (smoothing is affine,
so lam * CE_eps(y_a) + (1 - lam) * CE_eps(y_b) is the suite's loss), plain fp32 SGD with
momentum 0.9 and weight decay 1e-4, and a host read of the loss and of the hits every batch.

How fast: see the README's Performance section (measured by `python -m src.tools.bench`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class ArrayImages(Dataset):
    """uint8 images (N, H, W, C) and labels served one PIL image at a time, as torchvision's
    CIFAR10 dataset does."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: transforms.Compose) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.x[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(pil), int(self.y[i])


def train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                    crop_padding: int = 0, hflip: bool = False) -> transforms.Compose:
    """The original's training transform, with crop and flip only where the dataset has them."""
    steps: list = []
    if crop_padding > 0:
        steps.append(transforms.RandomCrop(size, padding=crop_padding))
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    return transforms.Compose(steps)


def default_workers() -> int:
    """The original's 8 loader workers, capped at this machine's cores."""
    return min(8, os.cpu_count() or 1)


def make_loader(x: np.ndarray, y: np.ndarray, batch_size: int, mean: Sequence[float],
                std: Sequence[float], crop_padding: int = 0, hflip: bool = False,
                workers: int | None = None) -> DataLoader:
    """A shuffling DataLoader over the arrays (the last partial batch is kept, as there)."""
    tf = train_transform(x.shape[1], mean, std, crop_padding, hflip)
    workers = default_workers() if workers is None else workers
    return DataLoader(ArrayImages(x, y, tf), batch_size=batch_size, shuffle=True,
                      num_workers=workers)


def mixup_data(x: torch.Tensor, y: torch.Tensor, alpha: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixed inputs, the two target sets and lambda (lambda = 1 when alpha = 0, as there)."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    index = torch.randperm(x.size(0)).to(device)
    return lam * x + (1 - lam) * x[index, :], y, y[index], lam


def mixup_criterion(criterion: nn.Module, pred: torch.Tensor, y_a: torch.Tensor,
                    y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * loss(y_a) + (1 - lam) * loss(y_b)."""
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


def make_optimizer(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """The original's optimizer: SGD, momentum 0.9, weight decay 1e-4 on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


@dataclass
class EpochResult:
    """What the reference epoch reports: mean loss, accuracy, images seen."""

    loss: float
    acc: float
    images: int


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                alpha: float, eps: float, device: torch.device) -> EpochResult:
    """One epoch the original way (its `train(epoch)`, without the progress bar)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=eps)
    model.train()
    train_loss, correct, total, batches = 0.0, 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        inputs, targets_a, targets_b, lam = mixup_data(inputs, targets, alpha, device)
        outputs = model(inputs)
        loss = mixup_criterion(criterion, outputs, targets_a, targets_b, lam)
        train_loss += loss.item()  # a host sync per batch, as there
        _, predicted = torch.max(outputs.data, 1)
        total += targets.size(0)
        correct += float(lam * predicted.eq(targets_a).cpu().sum().float()
                         + (1 - lam) * predicted.eq(targets_b).cpu().sum().float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        batches += 1
    return EpochResult(train_loss / max(batches, 1), correct / max(total, 1), total)
