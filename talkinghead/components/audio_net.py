"""The audio feature extractor: per-window convolution, then attention over neighbouring windows."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AudioNet(nn.Module):
    """One window of audio features (B, W, D) -> an audio code (B, out_dim).

    Strided 1D convolutions over time halve the window until one step is left, as in the
    AD-NeRF extractor RAD-NeRF reuses; it works with any per-frame feature (log-mel, HuBERT).
    """

    def __init__(self, in_dim: int, window: int, out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, channels = window, in_dim
        for out_channels in (32, 32, 64, 64):
            if width <= 1:
                break
            layers += [
                nn.Conv1d(channels, out_channels, 3, stride=2, padding=1),
                nn.LeakyReLU(0.02),
            ]
            channels, width = out_channels, (width + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(channels * width, 64), nn.LeakyReLU(0.02), nn.Linear(64, out_dim)
        )

    def forward(self, window: Tensor) -> Tensor:
        """Encode (B, W, D) windows."""
        x = self.convs(window.transpose(1, 2))
        return self.head(x.flatten(1))


class AudioAttention(nn.Module):
    """Temporal smoothing: a learned softmax over K neighbouring codes (B, K, C) -> (B, C)."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.scores = nn.Sequential(
            nn.Conv1d(dim, 16, 3, padding=1),
            nn.LeakyReLU(0.02),
            nn.Conv1d(16, 4, 3, padding=1),
            nn.LeakyReLU(0.02),
            nn.Conv1d(4, 1, 3, padding=1),
        )
        self.mix = nn.Linear(k, k)

    def forward(self, codes: Tensor) -> Tensor:
        """Weighted mean of the K codes."""
        s = self.scores(codes.transpose(1, 2))[:, 0]  # (B, K)
        weights = torch.softmax(self.mix(s), dim=1)
        return (weights.unsqueeze(-1) * codes).sum(dim=1)


class AudioCodeNet(nn.Module):
    """(B, K, W, D) stacks of K consecutive windows -> smoothed audio code (B, out_dim)."""

    def __init__(self, in_dim: int, window: int, k: int, out_dim: int) -> None:
        super().__init__()
        self.feature_dim = in_dim
        self.net = AudioNet(in_dim, window, out_dim)
        self.attention = AudioAttention(out_dim, k)

    def forward(self, windows: Tensor) -> Tensor:
        """Encode and smooth."""
        b, k, w, d = windows.shape
        codes = self.net(windows.reshape(b * k, w, d)).reshape(b, k, -1)
        return self.attention(codes)
