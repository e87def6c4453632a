"""Choosing the device a command runs on, refused up front when the machine lacks it."""
from __future__ import annotations

import torch

from ired_video.config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; otherwise ``torch.device(name)``,
    refused (``ConfigError``) when it names no device or a GPU this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device
