"""Compressed sensing with generative models for MRI by annealed Langevin dynamics (Jalal,
Arvinte, Daras, Price, Dimakis and Tamir, "Robust Compressed Sensing MRI with Deep Generative
Priors", NeurIPS 2021): the reference's ``csgm_mri`` baseline.

Noise levels sigma_1 > ... > sigma_L geometric from ``sigma_max`` to ``sigma_min`` (reference: 232
to 0.0066 over 2311 levels). From level ``start_iter`` on, ``n_steps_each`` Langevin steps per
level with step alpha_c = step_lr (sigma_c / sigma_L)^2:

    x <- x + alpha_c (score(x, sigma_c) - g) + sqrt(2 alpha_c) z,
    score(x, sigma) = (D(x; sigma) - x) / sigma^2,

with g the measurement gradient A^H (A x - y) = grad ||A x - y||^2 / 2. Two weightings of g:

* ``normalize=True`` (the reference's, default): g rescaled per sample to ``mse`` times the norm
  of the score, so ``mse`` is the ratio of data to prior pull whatever the noise level;
* ``normalize=False`` (the paper's): g times ``mse / sigma_c^2``, a Gaussian likelihood whose
  variance anneals with the level.

The chain starts from U[0, 1) as the reference and the paper (from the item's own stream). NFE
and operator gradients per sample: (L - start_iter) n_steps_each (3465 at the reference's
settings). Deviation: the norms are per sample (the reference's run over the whole batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from algo.base import Algo, row_norm


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """NCSN noise levels: ``num_levels`` geometric steps from ``sigma_max`` to ``sigma_min``."""
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max} and {sigma_min}")
    if int(num_levels) < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), int(num_levels)))


class CSGMMRI(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        sigmas_config,
        start_iter: int = 1155,
        n_steps_each: int = 3,
        step_lr: float = 5e-5,
        mse: float = 5.0,
        normalize: bool = True,
    ):
        super().__init__(net, forward_op)
        self.sigmas = geometric_sigmas(**sigmas_config)
        if not 0 <= int(start_iter) < len(self.sigmas):
            raise ValueError(
                f"start_iter must be in [0, {len(self.sigmas)}) (the number of noise levels), "
                f"got {start_iter}"
            )
        if int(n_steps_each) < 1:
            raise ValueError(f"n_steps_each must be >= 1, got {n_steps_each}")
        self.start_iter, self.n_steps_each = int(start_iter), int(n_steps_each)
        self.step_lr, self.mse, self.normalize = float(step_lr), float(mse), bool(normalize)

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        x = rng.rand(*self.shape).to(observation.y.device)
        sigma_last = float(self.sigmas[-1])
        with torch.no_grad():
            for sigma in self.sigmas[self.start_iter :]:
                sigma = float(sigma)
                alpha = self.step_lr * (sigma / sigma_last) ** 2
                for _ in range(self.n_steps_each):
                    score = (self.net(x, torch.as_tensor(sigma, device=x.device)) - x) / sigma**2
                    g = 0.5 * self.forward_op.gradient(x, observation).to(x.dtype)
                    if self.normalize:
                        g = g / row_norm(g).clamp_min(1e-30) * row_norm(score) * self.mse
                    else:
                        g = g * (self.mse / sigma**2)
                    z = rng.randn_like(x)
                    x = x + alpha * (score - g) + math.sqrt(2.0 * alpha) * z
        return x
