"""What the tools print and write: where they ran, `name value` lines, the JSON report."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from src.files import write_json_atomic


def machine(device: torch.device) -> dict[str, Any]:
    """Where it ran."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": name}


def print_fields(fields: dict[str, Any], keys: Any = None) -> None:
    """One `name value` line per field (floats to 4 significant digits)."""
    for k in keys or fields:
        v = fields[k]
        print(f"{k:26s} {v:.4g}" if isinstance(v, float) else f"{k:26s} {v}")


def write_report(report: dict[str, Any], out: str | Path) -> None:
    """The report as JSON at `out` (atomically), and where it went."""
    write_json_atomic(out, report)
    print(f"written: {out}")
