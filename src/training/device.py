"""Where and in which precision a run executes: device, autocast dtype, memory layout.

Several GPUs under a parallel launcher (joblib, submitit_local): each worker process takes one
GPU for its life, the one with the fewest of the suite's processes on it (each process that
took a GPU holds a file named by its pid in that GPU's folder, `~/.cache/lsmix/gpus/N/`),
jobs started at the same moment (seeing the same counts) spreading by job number. Job number
mod GPU count balanced nothing: joblib hands the next job to whichever worker is free, so two
workers could train on one GPU while another idled, and a reused worker moved between GPUs,
keeping a copy of its cached data and models on each. `torch.cuda.set_device` makes the
chosen GPU the process's current one, so no worker opens a context on GPU 0 as well.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from src.config.options import AMP_CHOICES
from src.errors import ConfigError
from src.files import user_cache_dir
from src.training.threads import pid_alive


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


# Which GPU each of the suite's processes on this machine took (see the module docstring).
GPU_CLAIMS = Path(os.environ.get("LSMIX_GPU_CLAIMS_DIR") or user_cache_dir() / "gpus")
_process_gpu: int | None = None  # the GPU this process took


def gpu_loads(n: int, folder: Path | None = None) -> list[int]:
    """How many live processes hold each of the n GPUs (stale claims are removed)."""
    folder = GPU_CLAIMS if folder is None else folder
    loads = []
    for i in range(n):
        live = 0
        with contextlib.suppress(OSError):
            for f in (folder / str(i)).iterdir():
                if f.name.isdigit() and pid_alive(int(f.name)):
                    live += 1
                else:
                    f.unlink(missing_ok=True)
        loads.append(live)
    return loads


def pick_gpu(loads: Sequence[int], job: int) -> int:
    """The least-held GPU; among equally held ones the job number decides, so jobs started
    at the same moment, which all see the same loads, spread over them."""
    least = min(loads)
    tied = [i for i, load in enumerate(loads) if load == least]
    return tied[job % len(tied)]


def claim_gpu(job: int, n: int) -> int:
    """This process's GPU: the one it took before, else the least-held one, claimed now."""
    global _process_gpu
    if _process_gpu is None or _process_gpu >= n:
        _process_gpu = pick_gpu(gpu_loads(n), job)
        mine = GPU_CLAIMS / str(_process_gpu) / str(os.getpid())
        with contextlib.suppress(OSError):  # an unwritable cache: the pick stands unclaimed
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.write_text("")
            atexit.register(mine.unlink, missing_ok=True)
    return _process_gpu


def resolve_device(spec: str, spread: int | None = None) -> torch.device:
    """`auto` picks CUDA when there is one; `cuda` without a GPU is an error, not a fallback.

    `spread` is the job number of a parallel launcher: on several GPUs `auto` then gives the
    process the least-held GPU (claim_gpu), so parallel jobs share the GPUs evenly instead of
    piling onto one. A sequential sweep stays on GPU 0.
    """
    spec = str(spec)
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n = torch.cuda.device_count()
        return torch.device("cuda", claim_gpu(spread, n) if spread is not None and n > 1 else 0)
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
    if device.type == "cuda" and device.index is not None:
        # The current device of the process: kernels, caches and the CUDA context go there,
        # not to GPU 0 (where every worker of a parallel sweep would open a context).
        torch.cuda.set_device(device)
    cl = trainer_cfg["channels_last"]
    channels_last = device.type == "cuda" if cl == "auto" else bool(cl)
    use_fast_kernels(device)
    return Execution(device, resolve_amp(str(trainer_cfg["amp"]), device), channels_last)


def use_fast_kernels(device: torch.device) -> None:
    """Let cuDNN time its convolution algorithms once per shape and keep the fastest.

    Training batches have one fixed shape (and evaluation batches another), so the search is
    paid once per run and every later step uses the winner: on an H100, eager PreAct
    ResNet-18 steps got faster by it (README, Performance). The original Mixup code sets the
    same flag. It is one reason GPU reruns are not bit-identical (the timed choice may differ
    between runs), atomic adds in convolution backward the other; CPU runs are unaffected.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
