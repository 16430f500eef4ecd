"""Diffusion Policy Gradient (Tang, Xie, Feng, Wang, Zhang and Bai, "Solving General Noisy
Inverse Problem via Posterior Sampling: A Policy Gradient Viewpoint", AISTATS 2024), as InverseBench
runs it: derivative-free in the forward model (only ``loss`` is called), with a VJP through the
network. Reference defaults: VP grid, 1000 steps, 5000 Monte Carlo draws per step.

Each step i, for every sample row independently:

* denoise x_t -> x0_hat; L_ref = ||y - A(x0_hat)||^2;
* Z = beta2 Z + (1 - beta2) L_ref (an EMA, beta2 = 0.9, started at the first L_ref);
* r = clamp(sqrt(Z / #pixels) / 2, rmin, clamp_r);
* M draws x_j = x0_hat + r eps_j from the Gaussian "policy" q(x_0 | x_t) = N(x0_hat, r^2 I),
  rewards R_j = exp(-(L_j - L_ref) / Z), leave-one-out baselines b_j = mean_{k != j} R_k;
* REINFORCE (the paper's policy-gradient view of the guidance term): the gradient w.r.t. x_t of
  (1/M) sum_j (R_j - b_j) ||x_j - x0_hat||^2 / (2 r^2), i.e. a VJP of
  -(1/(M r)) sum_j (R_j - b_j) eps_j through the network;
* momentum g = b g_prev + (1 - b) g_now with b = beta (N - i - 1) / N, where g_prev is the previous
  step's raw (un-mixed) gradient, as in the reference;
* the unit direction -g / ||g|| times ``guidance_scale`` is added to the score before the
  Euler(-Maruyama) step.

The reward temperature Z, the radius r and the momentum are the reference code's choices (it
credits the radius normalization to the authors' implementation); they were not checked against
the paper's text.

The M draws are processed in blocks of ``batch_size`` per sample row (one ``loss`` call of
rows x batch_size); only running sums are kept (sum_j R_j, sum_j R_j eps_j, sum_j eps_j, since
sum_j (R_j - b_j) eps_j = (M sum_j R_j eps_j - sum_j R_j sum_j eps_j) / (M - 1)), so memory does
not grow with M. Rewards and the running sums are kept in float64.

Counts per sample: num_steps NFE (+VJP) and num_steps (1 + num_mc_samples) loss rows.

Deviations from the reference code:

* Reference bug fixed in both compat modes: Z and the previous gradient lived on the object,
  set once in ``__init__``, so they leaked from one test item (and call) into the next. Here they
  are local to a call and kept per sample row.
* ``num_samples > 1`` works (the reference asserts 1): every row has its own draws, rewards, Z,
  radius, momentum and normalization (the reference takes the norm over the whole batch).
* ``clamp_r`` (accepted but unused by the reference) is used as the upper bound of r, as its
  name says; ``clamp_r: null`` disables it. It did not bind on the exact test problems (the
  largest r seen on gmm d=8, 10 items per d_y in {1, 2, 4}, was 6.5; on grf r <= 0.2); it bounds
  the radius early on when the misfit is huge.
* ``num_mc_samples`` need not be a multiple of ``batch_size`` (the last block is smaller); it
  must be >= 2 (the leave-one-out baseline needs two draws).
* All randomness comes from the per-row streams (results do not depend on batching).

``compat=reference`` (utils/compat.py) ignores ``clamp_r``, as the reference does (r is bounded
below by ``rmin`` only); everything else equals the reference to float rounding at batch 1 on a
single test item. The state leak between items stays fixed in both modes.
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.diffusion import denoise_scaled, euler_step
from utils.progress import report
from utils.scheduler import Scheduler

BETA2 = 0.9  # EMA factor of the reward temperature Z (reference: beta_2, fixed)


def _col(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(-1, *[1] * (ndim - 1))


class DPG(Algo):
    requires = frozenset()

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        guidance_scale: float,
        num_mc_samples: int = 100,
        batch_size: int = 64,
        beta: float = 0.1,
        clamp_r: float | None = 10.0,
        rmin: float = 0.0,
        sde: bool = True,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "DPG compat")
        if int(num_mc_samples) < 2:
            raise ValueError(f"num_mc_samples must be >= 2 (leave-one-out), got {num_mc_samples}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.guidance_scale = float(guidance_scale)
        self.num_mc = int(num_mc_samples)
        self.batch_size = int(batch_size)
        self.beta = float(beta)
        self.clamp_r = None if clamp_r is None else float(clamp_r)
        self.rmin = float(rmin)
        self.sde = bool(sde)

    def _policy_gradient(self, x0, loss_ref, Z, r, observation, rng):
        """d/d x0_hat of (1/M) sum_j (R_j - b_j) ||x_j - x0_hat||^2 / (2 r^2), per row (float64,
        flattened)."""
        rows, m = x0.shape[0], self.num_mc
        flat = x0.reshape(rows, -1)
        sum_w = flat.new_zeros(rows, dtype=torch.float64)
        sum_weps = flat.new_zeros(flat.shape, dtype=torch.float64)
        sum_eps = flat.new_zeros(flat.shape, dtype=torch.float64)
        for start in range(0, m, self.batch_size):
            c = min(self.batch_size, m - start)
            eps = rng.randn(c, flat.shape[1]).to(x0.device, x0.dtype)  # (rows, c, D)
            draws = flat.unsqueeze(1) + r.to(x0.dtype).reshape(rows, 1, 1) * eps
            loss = self.forward_op.loss(draws.reshape(rows * c, *x0.shape[1:]), observation)
            # Rewards R_j = exp(-(L_j - L_ref) / Z), stored as R_j - 1: the estimate below is
            # unchanged by a common shift of the rewards, and near-equal rewards lose no digits.
            # Z >= (1 - beta2) L_ref keeps the exponent <= 10.
            w = torch.expm1(-(loss.reshape(rows, c).double() - loss_ref.unsqueeze(1)) / Z[:, None])
            sum_w += w.sum(1)
            sum_weps += torch.einsum("rc,rcd->rd", w.to(eps.dtype), eps).double()
            sum_eps += eps.sum(1).double()
        # sum_j (R_j - b_j) eps_j with leave-one-out baselines b_j = (sum_k R_k - R_j) / (M - 1).
        adv = (m * sum_weps - sum_w.unsqueeze(1) * sum_eps) / (m - 1)
        return -adv / (m * r.unsqueeze(1))

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        n_steps = sched.num_steps
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        num_pixels = math.prod(self.shape)
        Z = prev_grad = None  # per call, per row: nothing carries over between calls or items
        for i in range(n_steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, score = denoise_scaled(self.net, x, sched, i)
            with torch.no_grad():
                x0d = x0.detach()
                loss_ref = self.forward_op.loss(x0d, observation).double()
                Z = loss_ref if Z is None else BETA2 * Z + (1 - BETA2) * loss_ref
                Z = Z.clamp_min(1e-30)
                r = (Z / num_pixels).sqrt() / 2
                upper = None if self.compat == "reference" else self.clamp_r
                r = r.clamp(min=self.rmin, max=upper).clamp_min(1e-30)
                g_x0 = self._policy_gradient(x0d, loss_ref, Z, r, observation, rng)
            (grad,) = torch.autograd.grad(x0, x, grad_outputs=g_x0.reshape(x0.shape).to(x0.dtype))
            # Momentum over the raw gradients of consecutive steps, fading out towards the end.
            b = self.beta * (n_steps - i - 1) / n_steps
            mixed = grad if prev_grad is None else b * prev_grad + (1 - b) * grad
            prev_grad = grad
            norm = mixed.flatten(1).norm(dim=1)
            direction = -mixed / (_col(norm, mixed.dim()) + 1e-7)
            # Euler(-Maruyama) step with the guidance direction added to the score.
            noise = rng.randn_like(x) if self.sde else None
            guided = score.detach() + self.guidance_scale * direction
            x = euler_step(x.detach(), guided, sched, i, self.sde, noise)
            report(i, n_steps, data_fitting_loss=loss_ref.sqrt())
        return x.detach()
