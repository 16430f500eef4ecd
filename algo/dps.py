"""Diffusion Posterior Sampling (Chung et al., "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR 2023), Algorithm 1, on any ``Scheduler`` grid (reference: VP, 1000 steps).

Each step: denoise x_t -> x0_hat; take the unconditional Euler(-Maruyama) step; then subtract
``guidance_scale`` times the gradient w.r.t. x_t of ||y - A(x0_hat)||, back-propagated through the
network.

Deviation from the reference code: the norm is taken per sample. The reference divides the
gradient of the batch-summed squared loss by sqrt of that sum, which couples the samples of a batch
(sample k then depends on the others); here every row gets d||y - A(x0_hat_k)|| / d x_t,k.
"""

from __future__ import annotations

import torch

from algo.base import Algo
from utils.compat import check_compat
from utils.diffusion import denoise_scaled, euler_step
from utils.progress import report
from utils.scheduler import Scheduler


class DPS(Algo):
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        guidance_scale: float,
        sde: bool = True,
        compat: str = "corrected",
    ):
        """``compat`` (utils/compat.py): both modes compute the same thing here (batch 1 equals
        the reference to float rounding; only the batch coupling of its norm stays fixed)."""
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "DPS compat")
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.guidance_scale = float(guidance_scale)
        self.sde = bool(sde)

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        x = rng.randn(*self.shape).to(observation.y.device) * sched.sigma_max
        for i in range(sched.num_steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0, score = denoise_scaled(self.net, x, sched, i)
                # Gradient of ||y - A(x0_hat)|| = d||r||^2 / (2 ||r||), pulled back to x_t.
                grad, loss = self.forward_op.gradient(x0.detach(), observation, return_loss=True)
                (guidance,) = torch.autograd.grad(x0, x, grad_outputs=grad)
            norm = loss.clamp_min(1e-30).sqrt().to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
            # Unconditional Euler(-Maruyama) step.
            noise = rng.randn_like(x) if self.sde else None
            x_next = euler_step(x.detach(), score.detach(), sched, i, self.sde, noise)
            # Measurement guidance.
            x = x_next - self.guidance_scale * guidance / (2 * norm)
            report(i, sched.num_steps, data_fitting_loss=loss.sqrt())
        return x.detach()
