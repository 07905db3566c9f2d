"""Where tensors run: CUDA when present, else CPU, so the same code runs on both."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when present, else CPU: the same code runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
