"""Loss-Guided Diffusion (Song, Zhang, Yin, Mardani, Liu, Kautz, Chen and Vahdat, "Loss-Guided
Diffusion Models for Plug-and-Play Controllable Generation", ICML 2023): their Monte Carlo
estimate (LGD-MC) of the guidance inside a DPS-style sampler, on any ``Scheduler`` grid
(reference: VP, 1000 steps, 3 MC samples).

Each step: denoise x_t -> x0_hat; draw ``num_samples`` points x0_hat + r_t eps_j with
r_t = sigma / sqrt(1 + sigma^2) (the paper's Gaussian q(x_0 | x_t) with the variance of
unit-variance data); average the gradients of the squared misfit l_j = ||y - A(x0_j)||^2 over the
draws; pull the average back to x_t through the network (a VJP: d x0_j / d x_t = d x0_hat / d x_t);
take the unconditional Euler(-Maruyama) step and subtract ``guidance_scale`` times
mean_j(grad l_j)^T J / (2 sqrt(mean_j l_j)) -- the gradient of the residual norm as in DPS, with
the MC averages in place of the single point.

Combination of the draws: the *mean of the gradients*, as the reference code does, not the paper's
log-mean-exp of likelihoods, grad log (1/n) sum_j exp(-l_j) (a softmax-weighted mean). The
likelihood scale the paper's form needs is not defined for the DPS-style normalized step.

Deviations from the reference code:

* Every output row gets its own ``num_samples`` MC draws (from its random stream) and its own
  normalization. The reference draws one set of MC samples shared by the whole batch (it only
  works for num_samples == 1) and normalizes by the sum of the MC losses when ``batch_grad`` is set
  but by their mean when it is not. ``compat=corrected`` always takes the mean, so
  ``batch_grad=False`` (one MC draw at a time, for operators without batched gradients or to
  bound memory) gives the same result as ``batch_grad=True``.
* All randomness comes from the per-item streams (results do not depend on batching).

``compat=reference`` (utils/compat.py) keeps the reference's normalization: sqrt of the *sum* of
the M losses with ``batch_grad=True`` (its default; guidance sqrt(M) times weaker than the mean's)
and sqrt of their mean with ``batch_grad=False`` (what its code computes there before it crashes
on ``torch.sqrt`` of a numpy float -- the crash stays fixed; its FWI sweep used this branch).
Everything else equals the reference to float rounding at batch 1. The reported
``data_fitting_loss`` is sqrt of the normalizing loss (the reference logs the last MC draw's in
the ``batch_grad=False`` branch).
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.diffusion import denoise_scaled, euler_step
from utils.progress import report
from utils.scheduler import Scheduler


class LGD(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        guidance_scale: float,
        num_samples: int = 10,
        batch_grad: bool = True,
        sde: bool = True,
        compat: str = "corrected",
    ):
        """``num_samples`` is the number of MC draws per step (the reference's name), not the
        number of outputs, which ``inference`` takes."""
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "LGD compat")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples (MC draws) must be >= 1, got {num_samples}")
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.guidance_scale = float(guidance_scale)
        self.num_mc = int(num_samples)
        self.batch_grad = bool(batch_grad)
        self.sde = bool(sde)

    def _mc_gradient(self, draws: torch.Tensor, observation):
        """Mean over the MC draws (rows, M, C, H, W) of the misfit gradient, and the mean of the
        misfits (their sum with ``compat=reference`` and ``batch_grad``)."""
        rows, m = draws.shape[:2]
        if self.batch_grad:
            # Row r's draws become rows r*M ... r*M+M-1: still item-major for the operator.
            grad, loss = self.forward_op.gradient(
                draws.flatten(0, 1), observation, return_loss=True
            )
            grad, loss = grad.reshape(draws.shape).mean(1), loss.reshape(rows, m).sum(1)
        else:
            grad, loss = 0.0, 0.0
            for j in range(m):
                g, l_j = self.forward_op.gradient(draws[:, j], observation, return_loss=True)
                grad, loss = grad + g, loss + l_j
            grad = grad / m
        summed = self.compat == "reference" and self.batch_grad
        return grad, (loss if summed else loss / m)

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        for i in range(sched.num_steps):
            sigma = float(sched.sigma_steps[i])
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, score = denoise_scaled(self.net, x, sched, i)
            # Monte Carlo draws around x0_hat from the Gaussian approximation of p(x_0 | x_t).
            r_t = sigma / math.sqrt(1.0 + sigma**2)
            eps = rng.randn(self.num_mc, *self.shape).to(x.device, x.dtype)
            draws = x0.detach().unsqueeze(1) + r_t * eps
            grad, loss = self._mc_gradient(draws, observation)
            (guidance,) = torch.autograd.grad(x0, x, grad_outputs=grad.to(x0.dtype))
            norm = loss.clamp_min(1e-30).sqrt().to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
            # Unconditional Euler(-Maruyama) step.
            noise = rng.randn_like(x) if self.sde else None
            x_next = euler_step(x.detach(), score.detach(), sched, i, self.sde, noise)
            # Measurement guidance.
            x = x_next - self.guidance_scale * guidance / (2 * norm)
            # The reference logs sqrt of the normalizing loss (the sum of the M MC losses).
            report(i, sched.num_steps, data_fitting_loss=loss.sqrt())
        return x.detach()
