"""Where tensors run: CUDA when present, else CPU, so the same code runs on both."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """CUDA when present, else CPU: the same code runs on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's cpuset counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(processes: int, cores: int | None = None) -> int:
    """Threads each of `processes` concurrent jobs may use so that together they fill the cores.

    More threads than that only make the jobs fight over the same cores (oversubscription made
    N concurrent renders slower than the same N run one after another).
    """
    return max(1, (cores or available_cores()) // max(1, processes))
