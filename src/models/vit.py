"""A small Vision Transformer.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale" (ICLR): the image is cut into non-overlapping patch_size x patch_size patches, each
linearly embedded (a strided conv); a learned class token is prepended and learned position
embeddings are added; `depth` pre-norm encoder blocks (multi-head self-attention, then a
GELU MLP of mlp_ratio x width, each in a residual branch after LayerNorm) follow, and a linear
head reads the final LayerNorm of the class token. Dropout (after the embedding, the attention
projection and each MLP layer) follows the paper. Initialisation (truncated normal, std 0.02,
for the embeddings and linear layers) follows its reference code (google-research/vision_
transformer) and timm.

Attention is written out (softmax(QK^T / sqrt(d)) V) rather than taken from
nn.MultiheadAttention or scaled_dot_product_attention: plain matmuls have vmap rules, so
several seeds train as one batched model (src.training.trainer.StackedTrainer), and at
these sizes (<= 257 tokens)
a fused kernel saves little.
"""

from __future__ import annotations

import torch
from torch import nn

from src.errors import ConfigError
from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class EncoderBlock(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)): the pre-norm block of the ViT paper."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * width, width),
            nn.Dropout(dropout),
        )
        self.dropout = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the N tokens of x (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, D / heads)
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output tokens (B, N, D)."""
        x = x + self.dropout(self.proj(self.attend(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, position embeddings, pre-norm encoder, linear head."""

    # Manifold Mixup stages (src.models.manifold): the images, the embedded tokens (class
    # token and positions included), the first encoder block's output, and the class token's
    # final representation that the head reads. Named so that they exist at every depth.
    MIX_LAYERS: tuple[str, ...] = (INPUT, "embed", "block1", "features")
    # augmentation.mix_layer=default draws among these per batch: the input, the embedded
    # tokens and the first block, as Verma et al. draw the input and early stages, not the
    # class token the head reads.
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "embed", "block1")

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        patch_size: int = 2,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h % patch_size or w % patch_size:
            common = sorted(set(_divisors(h)) & set(_divisors(w)))
            raise ConfigError(
                "model.patch_size", patch_size,
                f"a divisor of the image size {h}x{w}: one of {common}",
            )
        if width % heads:
            raise ConfigError(
                "model.heads", heads, f"a divisor of model.width={width}: one of {_divisors(width)}"
            )
        tokens = (h // patch_size) * (w // patch_size) + 1  # the patches and the class token
        self.patch_embed = nn.Conv2d(c, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(EncoderBlock(width, heads, mlp_ratio, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) embeddings and linear weights, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        x = mix_after(INPUT, x, mix_at, mixer)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        h = self.dropout(torch.cat([cls, patches], dim=1) + self.pos_embed)
        h = mix_after("embed", h, mix_at, mixer)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                h = mix_after("block1", h, mix_at, mixer)
        h = mix_after("features", self.norm(h)[:, 0], mix_at, mixer)
        return self.head(h)
