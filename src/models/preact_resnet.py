"""PreAct ResNet-18 as in the Mixup paper's CIFAR code.

He et al. 2016, "Identity Mappings in Deep Residual Networks" (pre-activation blocks);
Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", whose CIFAR tables use
`ResNet18` of github.com/facebookresearch/mixup-cifar10 (models/resnet.py). This module
follows that code, including two details in which it differs from He et al.:

* the stem is conv3x3-BN-ReLU (He et al.: a bare conv), and there is no BN-ReLU before
  the final pool (He et al. have one);
* each block computes a = ReLU(BN(x)) once and adds the shortcut to a, also when the
  shortcut is the identity (He et al. add x).

At width 64 on 3x32x32 with 10 classes this gives 11,171,274 parameters: 128 more than the
11,171,146 of kuangliu/pytorch-cifar's PreActResNet18, which has no stem BN.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.models.manifold import INPUT, Mixers, Stages, check_mix, mix_after


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (BN handles the shift)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a (projected when needed) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        needs_proj = stride != 1 or c_in != c_out
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if needs_proj else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output; the shortcut reads the pre-activated input, as in Mixup's code."""
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + self.shortcut(a)


class PreActResNet18(nn.Module):
    """Stem conv-BN-ReLU, four stages of two PreActBlocks, global average pool, linear head."""

    # Manifold Mixup stages (src.models.manifold): the images and the output of each of the
    # four stages, named as in the Mixup code; Verma et al. 2019 mix for PreAct ResNet-18 at
    # the input, layer1 or layer2 (k = 0, 1, 2).
    MIX_LAYERS: tuple[str, ...] = (INPUT, "layer1", "layer2", "layer3", "layer4")
    # augmentation.mix_layer=default draws among these per batch, as Verma et al.'s code does.
    MANIFOLD_LAYERS: tuple[str, ...] = (INPUT, "layer1", "layer2")

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_shape[0], width)
        self.bn1 = nn.BatchNorm2d(width)
        stages, c_in = [], width
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            c_out = width * mult
            blocks = (PreActBlock(c_in, c_out, stride), PreActBlock(c_out, c_out))
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        # Mixup's code uses avg_pool2d(out, 4), which is the global pool on 32x32 input;
        # the adaptive pool is the same there and also works on 8x8 and 28x28.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(
        self, x: torch.Tensor, mix_at: Stages | None = None, mixer: Mixers | None = None
    ) -> torch.Tensor:
        """Logits (B, K) for images (B, C, H, W); `mixer` applied after stage `mix_at`."""
        check_mix(self.MIX_LAYERS, mix_at, mixer)
        h = F.relu(self.bn1(self.conv1(mix_after(INPUT, x, mix_at, mixer))))
        for i, stage in enumerate(self.layers):
            h = mix_after(f"layer{i + 1}", stage(h), mix_at, mixer)
        return self.linear(self.pool(h).flatten(1))
