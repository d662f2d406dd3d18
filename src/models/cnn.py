"""A small fast convnet: Conv3x3-BN-ReLU blocks (Ioffe & Szegedy 2015 batch norm), each
followed by 2x2 max-pooling while the feature map is at least 2x2, then global average
pooling (Lin et al. 2014, "Network in Network") and a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """Conv3x3-BN-ReLU, optionally followed by a 2x2 max-pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BN follows: a bias is redundant
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU(-pool) blocks, global average pool, dropout, linear head."""

    # Manifold Mixup stages (src.models.manifold): the images, the first block's output, and
    # the pooled features the head reads. Named so that they exist for any `channels`.
    MIX_LAYERS: tuple[str, ...] = (INPUT, "block1", "features")
    # augmentation.mix_layer=default draws among these per batch: the input and the first
    # block, as Verma et al. draw the input and early stages, not the pooled features the
    # head reads.
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "block1")

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c_in, size = in_shape[0], min(in_shape[1], in_shape[2])
        blocks = []
        for c_out in channels:
            # Decided here from the static input size, so forward has no shape branches
            # and the same stack works on 8x8 digits and 32x32 CIFAR.
            pool = size >= 2
            blocks.append(_block(c_in, c_out, pool))
            c_in, size = c_out, size // 2 if pool else size
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        h = mix_after(INPUT, x, mix_at, mixer)
        for i, block in enumerate(self.features):
            h = block(h)
            if i == 0:
                h = mix_after("block1", h, mix_at, mixer)
        h = mix_after("features", self.pool(h).flatten(1), mix_at, mixer)
        return self.head(self.dropout(h))
