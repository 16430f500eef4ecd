"""RED-diff (Mardani, Song, Kautz and Vahdat, "A Variational Perspective on Solving Inverse
Problems with Diffusion Models", ICLR 2024), Algorithm 1: variational inference with a Dirac
(point-mass) posterior q = delta(x - mu), optimized by Adam with the score-matching regularizer
as a stochastic gradient, sweeping the noise level from high to low (reference: the VP grid, 1000
steps).

Step i (sigma = sigma_i, descending):

    eps ~ N(0, I),  u = mu + sigma eps,  eps_hat = (u - D(u; sigma)) / sigma,
    grad = w * d||y - A(mu)||^2 / d mu + lambda(sigma) * (eps_hat - eps),   Adam step on mu,

with w = ``observation_weight`` and lambda(sigma) = ``base_lambda`` times 1, sigma or sqrt(sigma)
(``lambda_scheduling_type`` constant / linear / sqrt; sigma is the paper's 1/SNR weighting
sqrt(1 - alpha_t) / sqrt(alpha_t)). eps_hat - eps is the paper's stop-gradient term
sg[eps_hat(x_t, t) - eps]; eps_hat is the same in the VP and EDM parametrizations, so u is fed
to the EDM denoiser unscaled.

What the samples are: RED-diff is mode-seeking. Each output row is an independent run of the
optimization from mu = 0; rows differ only through the noise eps drawn along the way. The rows are
therefore point estimates near one posterior mode (for a Gaussian posterior, near its
mean/MAP), and their spread is optimization noise, *not* posterior uncertainty: do not read the
sample standard deviation as a posterior one. With the data weight w in place of 1/(2 sigma_y^2)
the estimate is a regularized fit rather than the exact MAP. The spread grows with the learning
rate (Adam's steps stay ~lr in size however small the gradient).

Deviations from the reference code:

* Reference bug fixed: it gives the denoiser the *scaled* VP state s (mu + sigma eps), while the
  denoiser contract (and every other sampler of the reference) takes the unscaled one; at large
  sigma that made eps_hat ~ 0 and the regularizer pure noise.
* Every output row is optimized separately with its own noise (Adam is elementwise, so this is
  the reference's batched update); all randomness comes from the per-item streams. Adam is
  written out (same update as torch.optim.Adam).
* ``lambda_scheduling_type='sqrt'`` works (the reference calls torch.sqrt on a Python float).

``compat=reference`` (utils/compat.py) keeps the reference's scaled state: the denoiser gets
x_t = s (mu + sigma eps) and eps_hat = (x_t - D(x_t; sigma)) / sigma, which equals the reference
to float rounding at batch 1; ``compat=corrected`` feeds u = mu + sigma eps.
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.progress import report
from utils.scheduler import Scheduler

LAMBDA_SCHEDULES = {
    "constant": lambda sigma: 1.0,
    "linear": lambda sigma: sigma,
    "sqrt": lambda sigma: math.sqrt(sigma),
}


class REDDiff(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        num_steps: int = 1000,
        observation_weight: float = 1.0,
        base_lambda: float = 0.25,
        base_lr: float = 0.5,
        lambda_scheduling_type: str = "constant",
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "REDDiff compat")
        if lambda_scheduling_type not in LAMBDA_SCHEDULES:
            raise ValueError(
                f"lambda_scheduling_type must be one of {sorted(LAMBDA_SCHEDULES)}, "
                f"got {lambda_scheduling_type!r}"
            )
        self.scheduler = Scheduler(num_steps=num_steps, schedule="vp", timestep="vp", scaling="vp")
        self.observation_weight = float(observation_weight)
        self.base_lambda = float(base_lambda)
        self.base_lr = float(base_lr)
        self.lambda_fn = LAMBDA_SCHEDULES[lambda_scheduling_type]

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        device = observation.y.device
        mu = torch.zeros(len(rng), *self.shape, device=device)
        adam = _Adam(mu, self.base_lr, betas=(0.9, 0.99))
        for i in range(self.scheduler.num_steps):
            sigma = float(self.scheduler.sigma_steps[i])
            # Score-matching regularizer: denoise a fresh noisy copy of mu.
            eps = rng.randn(*self.shape).to(device, mu.dtype)
            with torch.no_grad():
                u = mu + sigma * eps
                if self.compat == "reference":
                    u = float(self.scheduler.scaling_steps[i]) * u  # the reference's x_t
                eps_hat = (u - self.net(u, torch.as_tensor(sigma, device=device))) / sigma
            # Data fit.
            grad, loss = self.forward_op.gradient(mu, observation, return_loss=True)
            report(i, self.scheduler.num_steps, data_fitting_loss=loss.sqrt())
            mu = adam.step(
                self.observation_weight * grad.to(mu.dtype)
                + self.base_lambda * self.lambda_fn(sigma) * (eps_hat - eps)
            )
        return mu


class _Adam:
    """Adam (Kingma and Ba, 2015) on one tensor, as torch.optim.Adam computes it (eps 1e-8, bias
    correction), written out: elementwise, so rows stay independent, and without torch.optim's
    one-off start-up cost (seconds, a large share of a short run)."""

    def __init__(self, x: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.x, self.lr, self.betas, self.eps = x, lr, betas, eps
        self.m, self.v, self.t = torch.zeros_like(x), torch.zeros_like(x), 0

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad.square()
        denom = (self.v / (1 - b2**self.t)).sqrt() + self.eps
        self.x = self.x - self.lr / (1 - b1**self.t) * self.m / denom
        return self.x
