"""Device and precision choices: auto, explicit GPUs, spreading parallel jobs over GPUs
(balanced placement: tests/test_gpu_readiness.py)."""

import pytest
import torch

from src.errors import ConfigError
from src.training import device
from src.training.device import resolve_amp, resolve_device


def test_auto_is_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_amp("auto", torch.device("cpu")) is None


def test_cuda_without_a_gpu_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer\.device='cuda'"):
        resolve_device("cuda")


@pytest.mark.parametrize("job,gpu", [(0, 0), (1, 1), (2, 2), (3, 0), (7, 1)])
def test_parallel_jobs_spread_over_the_gpus(monkeypatch, tmp_path, job, gpu):
    """Workers starting together see every GPU free: the job number spreads them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(device, "GPU_CLAIMS", tmp_path)  # no other process holds a GPU
    monkeypatch.setattr(device, "_process_gpu", None)  # a fresh worker
    assert resolve_device("auto", spread=job) == torch.device("cuda", gpu)
    assert resolve_device("auto") == torch.device("cuda", 0)  # sequential: stay on one GPU


def test_explicit_gpu_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="cuda:0 .. cuda:1"):
        resolve_device("cuda:2")


def test_amp_auto_prefers_bf16_and_falls_back_to_fp16(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_amp("auto", gpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_amp("auto", gpu) is torch.float16
    assert resolve_amp("off", gpu) is None and resolve_amp("fp16", gpu) is torch.float16
    with pytest.raises(ConfigError, match=r"trainer\.amp='fp8'"):
        resolve_amp("fp8", gpu)
