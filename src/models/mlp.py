"""Multi-layer perceptron on the flattened image: the plain baseline of the Mixup paper's
tabular/UCI experiments (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


class MLP(nn.Module):
    """Flatten, then Linear-ReLU(-Dropout) blocks, then a linear head."""

    # Manifold Mixup stages (src.models.manifold): the images, the first hidden block's
    # output, and the last hidden block's output (what the head reads). Named so that they
    # exist at every depth; with one hidden layer the last two are the same place.
    MIX_LAYERS: tuple[str, ...] = (INPUT, "hidden1", "features")
    # augmentation.mix_layer=default draws among these per batch: the input and the first
    # hidden block, as Verma et al. draw the input and early stages, not what the head reads
    # (with one hidden layer, hidden1 is what the head reads).
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "hidden1")

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
        block_ends = []
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            block_ends.append(len(layers) - 1)
            width = size
        layers.append(nn.Linear(width, num_classes))
        # One Sequential, as before the stages were named: the parameter names and their
        # initialisation order (and so every seeded run) are unchanged.
        self.net = nn.Sequential(*layers)
        self.first_block_end, self.last_block_end = block_ends[0], block_ends[-1]

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        h = mix_after(INPUT, x, mix_at, mixer)
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i == self.first_block_end:
                h = mix_after("hidden1", h, mix_at, mixer)
            if i == self.last_block_end:
                h = mix_after("features", h, mix_at, mixer)
        return h
