"""A recurrent classifier that reads the image row by row.

Hochreiter & Schmidhuber 1997, "Long Short-Term Memory". Images as sequences follow the
sequential-MNIST benchmark of Le et al. 2015 ("A Simple Way to Initialize Recurrent Networks
of Rectified Linear Units"), which reads pixels; one row per step keeps the sequence short.
"""

from __future__ import annotations

import torch
from torch import nn


class RowLSTM(nn.Module):
    """LSTM over the H rows (each step C*W values); linear head on the final hidden states."""

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
        # torch applies LSTM dropout only between layers (and warns for one layer), so it is
        # passed only when there is more than one; the head's dropout always applies.
        self.lstm = nn.LSTM(
            c * w,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W)."""
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, H, C*W): one row per step
        # torch.compile breaks the graph here: dynamo leaves nn.LSTM to eager (cuDNN) unless
        # torch._dynamo.config.allow_rnn is set; the code around it traces fine.
        _, (h_n, _) = self.lstm(rows)
        # h_n is (layers * directions, B, hidden): the last layer's final state of each
        # direction (the backward one's final state is at the first row).
        last = h_n[-self.directions :].transpose(0, 1).reshape(b, -1)
        return self.head(self.dropout(last))
