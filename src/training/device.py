"""Where and in which precision a run executes: device, autocast dtype, memory layout."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from src.config.options import AMP_CHOICES
from src.errors import ConfigError


@dataclass(frozen=True)
class Execution:
    """The resolved device, autocast dtype (None = fp32) and channels-last choice."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def amp(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the chosen dtype, or a no-op for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for float16 (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def resolve_device(spec: str, spread: int | None = None) -> torch.device:
    """`auto` picks CUDA when there is one; `cuda` without a GPU is an error, not a fallback.

    `spread` is the job number of a parallel launcher: `auto` then puts job i on GPU
    i mod (number of GPUs), so parallel jobs share the GPUs instead of piling onto one.
    """
    spec = str(spec)
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n = torch.cuda.device_count()
        return torch.device("cuda", spread % n if spread is not None and n > 1 else 0)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", spec, "auto or cpu on a machine without a GPU")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("trainer.device", spec,
                              f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return dev
    raise ConfigError("trainer.device", spec, "auto, cpu, cuda or cuda:N")


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the GPU has it, fp16 (with a scaler) otherwise, fp32 on CPU."""
    if spec not in AMP_CHOICES:
        raise ConfigError("trainer.amp", spec, f"one of {list(AMP_CHOICES)}")
    if spec == "off" or (spec == "auto" and device.type != "cuda"):
        return None
    if spec == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if spec == "bf16" else torch.float16


def resolve_execution(trainer_cfg: Mapping[str, Any], spread: int | None = None) -> Execution:
    """Device, precision and layout from the trainer config (`spread`: see resolve_device)."""
    device = resolve_device(trainer_cfg["device"], spread)
    cl = trainer_cfg["channels_last"]
    channels_last = device.type == "cuda" if cl == "auto" else bool(cl)
    use_fast_kernels(device)
    return Execution(device, resolve_amp(str(trainer_cfg["amp"]), device), channels_last)


def use_fast_kernels(device: torch.device) -> None:
    """Let cuDNN time its convolution algorithms once per shape and keep the fastest.

    Training batches have one fixed shape (and evaluation batches another), so the search is
    paid once per run and every later step uses the winner: on an H100, eager PreAct
    ResNet-18 steps got faster by it (README, Performance). The original Mixup code sets the
    same flag. GPU results are not bit-reproducible either way (atomic adds in conv
    backward); CPU runs are unaffected.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
