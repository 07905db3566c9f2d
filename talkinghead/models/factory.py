"""Build a renderer model by family name."""

from __future__ import annotations

from typing import Any

from talkinghead.configs import ModelConfig

FAMILIES = ("radnerf", "baseline")


def build_model(family: str, config: ModelConfig, num_frames: int, feature_dim: int) -> Any:
    """A fresh model of `family` ("radnerf", or "baseline": the AD-NeRF style benchmark)."""
    if family == "radnerf":
        from talkinghead.models.radnerf import RadNerf

        return RadNerf(config, num_frames, feature_dim)
    if family == "baseline":
        from talkinghead.models.baseline import BaselineNerf

        return BaselineNerf(config, num_frames, feature_dim)
    raise ValueError(f"unknown renderer family {family!r}; choose one of {FAMILIES}")
