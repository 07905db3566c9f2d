"""Exponential moving average of a model's weights (RAD-NeRF trains with EMA 0.95)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copies of every parameter, blended after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = model
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters()
        }

    @torch.no_grad()
    def update(self, names: set[str] | None = None) -> None:
        """Blend the current weights in (only `names` when given: the stage's parameters)."""
        for name, p in self.model.named_parameters():
            if names is None or name in names:
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        backup = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow weights."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore shadow weights saved by `state_dict`."""
        for name, value in state.items():
            self.shadow[name].copy_(value)
