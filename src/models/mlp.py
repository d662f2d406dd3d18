"""Multi-layer perceptron on the flattened image: the plain baseline of the Mixup paper's
tabular/UCI experiments (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear-ReLU(-Dropout) blocks, then a linear head."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (512, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_shape[0] * in_shape[1] * in_shape[2]
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W)."""
        return self.net(x)
