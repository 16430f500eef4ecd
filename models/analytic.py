"""Analytic priors behind the denoiser contract ``net(x, sigma) -> E[x_0 | x_0 + sigma eps = x]``.

An ``AnalyticPrior`` wraps a closed-form distribution (utils/distributions.py): Gaussian mixture,
dense Gaussian or stationary Gaussian field. The denoiser is exact and computed in float64; input
and output keep the caller's dtype. It has no parameters, so no checkpoint is needed.
"""

from __future__ import annotations

import torch
from torch import nn


class AnalyticPrior(nn.Module):
    """Exact denoiser of ``distribution`` for images of ``shape`` (C, H, W)."""

    def __init__(
        self, distribution, shape=None, sigma_min: float = 0.0, sigma_max: float = float("inf")
    ):
        super().__init__()
        self.distribution = distribution
        default = getattr(distribution, "shape", (distribution.dim, 1, 1))
        self.shape = tuple(shape) if shape is not None else tuple(default)
        dim = 1
        for n in self.shape:
            dim *= n
        if dim != distribution.dim:
            raise ValueError(
                f"shape {self.shape} has {dim} entries, the distribution {distribution.dim}"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.img_channels = self.shape[0]
        self.img_resolution = self.shape[-1]

    def _apply(self, fn, recurse=True):
        # Follow .to(device) / .cuda(); the distribution stays float64 whatever dtype is asked.
        out = super()._apply(fn, recurse)
        device = fn(torch.zeros(1)).device
        self.distribution = self.distribution.to(device)
        return out

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma has {sigma.numel()} entries for {x.shape[0]} rows")
        out = self.distribution.denoise(x.reshape(x.shape[0], -1), sigma)
        return out.reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact prior samples (n, C, H, W), float64."""
        return self.distribution.sample(n, generator).reshape(n, *self.shape)
