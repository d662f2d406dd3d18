"""Wide Residual Network WRN-depth-k.

Zagoruyko & Komodakis 2016, "Wide Residual Networks": a 16-channel 3x3 stem, three stages
of (depth - 4) / 6 pre-activation blocks (He et al. 2016) of widths 16k, 32k, 64k, dropout
between the two convs of a block, BN-ReLU, global average pool and a linear head.
WRN-28-10 on 10 classes has 36,479,194 parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.errors import ConfigError
from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 with an identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        # Fixed at build time, so forward's branch is static (torch.compile traces one path).
        self.project = stride != 1 or c_in != c_out
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if self.project else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        a = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(a)))))
        # A projection reads the pre-activated input (as in the WRN code); identity reads x.
        return out + (self.shortcut(a) if self.project else x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for images of any size (adaptive pool at the end)."""

    # Manifold Mixup stages (src.models.manifold): the images and the output of each of the
    # three groups of blocks (the paper's conv2, conv3, conv4).
    MIX_LAYERS: tuple[str, ...] = (INPUT, "group1", "group2", "group3")
    # augmentation.mix_layer=default draws among these per batch: Verma et al.'s WRN code
    # mixes at the input, or after its first or second group (k = 0, 1, 2).
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "group1", "group2")

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                "model.depth", depth, "depth with (depth - 4) divisible by 6, e.g. 16, 22, 28, 40"
            )
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False)
        blocks, c_in = [], 16
        for i, c_out in enumerate(widths):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(WideBlock(c_in, c_out, stride, dropout))
                c_in = c_out
        # One flat Sequential, as before the groups were named (parameter names unchanged);
        # the index of each group's last block names the stage after it.
        self.blocks = nn.Sequential(*blocks)
        self.group_ends = {(g + 1) * n - 1: f"group{g + 1}" for g in range(len(widths))}
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs, unit BN, zero linear bias, as in the WRN reference code."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        h = self.conv1(mix_after(INPUT, x, mix_at, mixer))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.group_ends:
                h = mix_after(self.group_ends[i], h, mix_at, mixer)
        h = F.relu(self.bn(h))
        return self.linear(self.pool(h).flatten(1))
