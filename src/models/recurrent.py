"""Recurrent classifiers that read the image row by row: an LSTM and a GRU over one reader.

Hochreiter & Schmidhuber 1997, "Long Short-Term Memory"; Cho et al. 2014, "Learning Phrase
Representations using RNN Encoder-Decoder for Statistical Machine Translation" (the GRU).
Images as sequences follow the sequential-MNIST benchmark of Le et al. 2015 ("A Simple Way to
Initialize Recurrent Networks of Rectified Linear Units"), which reads pixels; one row per
step keeps the sequence short.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


class RowRecurrent(nn.Module):
    """A recurrent net (`CELL`) over the H rows (each step C*W values); a linear head on the
    final hidden states. Subclasses choose the cell and nothing else."""

    CELL: ClassVar[type[nn.RNNBase]]
    # Manifold Mixup stages (src.models.manifold): the images, and the final hidden states
    # the head reads.
    MIX_LAYERS: tuple[str, ...] = (INPUT, "features")
    # augmentation.mix_layer=default draws among both per batch: the reader has no stage in
    # between, and the input alone would be plain Mixup.
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "features")
    # nn.LSTM and nn.GRU have no vmap rule, so their seeds cannot be trained as one batched
    # model (src.training.trainer.StackedTrainer).
    VMAPPABLE: ClassVar[bool] = False

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, _, w = in_shape
        self.directions = 2 if bidirectional else 1
        # torch applies recurrent dropout only between layers (and warns for one layer), so
        # it is passed only when there is more than one; the head's dropout always applies.
        self.rnn = self.CELL(
            c * w,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, num_classes)

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        x = mix_after(INPUT, x, mix_at, mixer)
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, H, C*W): one row per step
        # torch.compile breaks the graph here: dynamo leaves nn.LSTM and nn.GRU to eager
        # (cuDNN) unless torch._dynamo.config.allow_rnn is set; the code around it traces fine.
        _, state = self.rnn(rows)
        h_n = state[0] if isinstance(state, tuple) else state  # the LSTM adds its cell state
        # h_n is (layers * directions, B, hidden): the last layer's final state of each
        # direction (the backward one's final state is at the first row).
        last = h_n[-self.directions :].transpose(0, 1).reshape(b, -1)
        return self.head(self.dropout(mix_after("features", last, mix_at, mixer)))


class RowLSTM(RowRecurrent):
    """The row reader with LSTM cells."""

    CELL = nn.LSTM


class RowGRU(RowRecurrent):
    """The row reader with GRU cells."""

    CELL = nn.GRU
