"""Denoising score-matching losses (Karras et al., 2022, Table 1, "Training" rows).

Each loss returns the unreduced per-element loss weight(sigma) * (D(y + n, sigma) - y)^2; the
caller reduces. Noise levels and noise come from ``generator`` (never the global RNG).
"""

from __future__ import annotations

import torch


def _randn(shape, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _rand(shape, like: torch.Tensor, generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


class VPLoss:
    """VP (Song et al., 2021): t ~ U(epsilon_t, 1), sigma = sigma_VP(t), weight 1/sigma^2."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t

    def sigma(self, t):
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def __call__(self, net, images, labels=None, generator=None):
        B = images.shape[0]
        t = 1 + _rand((B, 1, 1, 1), images, generator) * (self.epsilon_t - 1)
        sigma = self.sigma(t)
        weight = 1 / sigma**2
        noisy = images + _randn(images.shape, images, generator) * sigma
        return weight * (net(noisy, sigma.flatten(), labels) - images) ** 2


class VELoss:
    """VE (Song et al., 2021): log-uniform sigma in [sigma_min, sigma_max], weight 1/sigma^2."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, net, images, labels=None, generator=None):
        B = images.shape[0]
        u = _rand((B, 1, 1, 1), images, generator)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** u
        weight = 1 / sigma**2
        noisy = images + _randn(images.shape, images, generator) * sigma
        return weight * (net(noisy, sigma.flatten(), labels) - images) ** 2


class EDMLoss:
    """EDM: ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, net, images, labels=None, generator=None):
        B = images.shape[0]
        sigma = (_randn((B, 1, 1, 1), images, generator) * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noisy = images + _randn(images.shape, images, generator) * sigma
        return weight * (net(noisy, sigma.flatten(), labels) - images) ** 2
