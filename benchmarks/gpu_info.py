"""GPU identification shared by the kernel benchmarks (imported from the script's own folder)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import torch


def gpu_name() -> str:
    return torch.cuda.get_device_name()


def nvidia_smi() -> str | None:
    """GPU name, driver and memory as nvidia-smi reports them, or None where it is missing."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def default_out(name: str) -> Path:
    """benchmarks/results/<name>-<gpu slug>.json."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name().lower()).strip("-")
    return Path(__file__).resolve().parent / "results" / f"{name}-{slug}.json"
