"""Zeroth-order DPS: Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky and Ye, "Diffusion
Posterior Sampling for General Noisy Inverse Problems", ICLR 2023) with the operator's gradient
replaced by a Gaussian-smoothed finite-difference estimate (Nesterov and Spokoiny, "Random
Gradient-Free Minimization of Convex Functions", Foundations of Computational Mathematics 2017:
their forward- and central-difference random oracles). The combination is InverseBench's own
baseline (no separate paper). It is derivative-free in the forward model: only ``loss`` is called;
the estimate is then pulled back through the network by a VJP, as in DPS. Reference defaults: EDM
grid (sigma = t, poly-7, no scaling, sigma 100 -> 0.01), 1000 steps, 2048 loss queries per step.

Each step: denoise x_t -> x0_hat; estimate g ~ grad L(x0_hat), L = ||y - A(x0_hat)||^2, from K
random directions u_k ~ N(0, I) drawn per sample row:

* central (``is_central``, K = num_queries // 2): g = (1/K) sum_k u_k (L(x + mu u_k) -
  L(x - mu u_k)) / (2 mu);
* forward (K = num_queries): g = (1/K) sum_k u_k (L(x + mu u_k) - L(x)) / mu;

then take the unconditional Euler(-Maruyama) step and subtract ``guidance_scale`` times
g^T J / (2 sqrt(L(x0_hat))), the estimated gradient of ||y - A(x0_hat)|| w.r.t. x_t (the reference
estimates the gradient of the squared loss and divides by 2 sqrt(L), as DPS does).

Directions are processed in blocks of ``batch_size`` per sample row (one ``loss`` call of
rows x batch_size directions, both signs together for the central scheme) and only the running
sum is kept, so memory does not grow with num_queries.

Counts per sample: num_steps NFE (+VJP) and num_steps (1 + 2 (num_queries // 2)) loss rows
(central) or num_steps (1 + num_queries) (forward).

Deviations from the reference code:

* Every row gets its own directions and its own normalization; the reference loops over the
  samples in Python and draws from the global RNG.
* K = num_queries // 2 (central) or num_queries (forward) exactly; the reference rounds K down to
  a multiple of ``batch_size``. A last, smaller block covers the remainder.
* All randomness comes from the per-row streams (results do not depend on batching).

``compat=reference`` (utils/compat.py) rounds K down to a multiple of ``batch_size`` as the
reference does (K = batch_size * (num_queries // (2 batch_size)) central, batch_size *
(num_queries // batch_size) forward; a setting that gives K = 0 is refused instead of dividing by
zero); everything else equals the reference to float rounding at batch 1. At the reference's
defaults (2048 queries, blocks of 512) the two modes agree.
"""

from __future__ import annotations

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.diffusion import denoise_scaled, euler_step
from utils.progress import report
from utils.scheduler import Scheduler


class DPS_GSG(Algo):
    requires = frozenset()

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        guidance_scale: float,
        num_queries: int,
        batch_size: int,
        mu: float,
        is_central: bool = True,
        sde: bool = True,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "DPS_GSG compat")
        self.is_central = bool(is_central)
        self.num_directions = int(num_queries) // 2 if self.is_central else int(num_queries)
        if self.compat == "reference" and int(batch_size) >= 1:
            self.num_directions -= self.num_directions % int(batch_size)
        if self.num_directions < 1:
            hint = " (compat=reference rounds down to a multiple of batch_size)"
            raise ValueError(
                f"num_queries={num_queries} gives no direction"
                + (hint if self.compat == "reference" else "")
            )
        if int(batch_size) < 1 or float(mu) <= 0:
            raise ValueError(f"batch_size must be >= 1 and mu > 0, got {batch_size}, {mu}")
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.guidance_scale = float(guidance_scale)
        self.batch_size = int(batch_size)
        self.mu = float(mu)
        self.sde = bool(sde)

    def smoothed_gradient(self, x0, observation, rng, base_loss=None):
        """Gaussian-smoothed estimate of d ||y - A(x0)||^2 / d x0 per row (x0's shape)."""
        rows, k, mu = x0.shape[0], self.num_directions, self.mu
        flat = x0.reshape(rows, -1)
        if not self.is_central and base_loss is None:
            base_loss = self.forward_op.loss(x0, observation)
        total = torch.zeros_like(flat)
        for start in range(0, k, self.batch_size):
            c = min(self.batch_size, k - start)
            u = rng.randn(c, flat.shape[1]).to(x0.device, x0.dtype)  # (rows, c, D)
            if self.is_central:
                probes = torch.cat([flat.unsqueeze(1) + mu * u, flat.unsqueeze(1) - mu * u], 1)
                loss = self.forward_op.loss(probes.reshape(-1, *x0.shape[1:]), observation)
                plus, minus = loss.reshape(rows, 2 * c).split(c, dim=1)
                coef = (plus - minus) / (2 * mu)
            else:
                probes = flat.unsqueeze(1) + mu * u
                loss = self.forward_op.loss(probes.reshape(-1, *x0.shape[1:]), observation)
                coef = (loss.reshape(rows, c) - base_loss.unsqueeze(1)) / mu
            total += torch.einsum("rc,rcd->rd", coef.to(u.dtype), u)
        return (total / k).reshape(x0.shape)

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        for i in range(sched.num_steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, score = denoise_scaled(self.net, x, sched, i)
            with torch.no_grad():
                loss = self.forward_op.loss(x0.detach(), observation)
                grad = self.smoothed_gradient(x0.detach(), observation, rng, base_loss=loss)
            # Gradient of ||y - A(x0_hat)|| = d||r||^2 / (2 ||r||), pulled back to x_t.
            (guidance,) = torch.autograd.grad(x0, x, grad_outputs=grad)
            norm = loss.clamp_min(1e-30).sqrt().to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
            # Unconditional Euler(-Maruyama) step.
            noise = rng.randn_like(x) if self.sde else None
            x_next = euler_step(x.detach(), score.detach(), sched, i, self.sde, noise)
            # Measurement guidance.
            x = x_next - self.guidance_scale * guidance / (2 * norm)
            report(i, sched.num_steps, data_fitting_loss=loss.sqrt())
        return x.detach()
