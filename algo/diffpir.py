"""DiffPIR (Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image Restoration",
CVPR Workshops (NTIRE) 2023), Algorithm 1, on any ``Scheduler`` grid (reference: VP, 1000 steps).

Half-quadratic splitting with the diffusion model as the denoiser. At grid point i (noise level
sigma, scaling s; x is the scaled state):

1. prior step: x0 = D(x/s; sigma);
2. data step: x0_hat = argmin_x ||y - A(x)||^2 + (rho/2) ||x - x0||^2 with
   rho = 2 lamb sigma_n^2 / (sigma s)^2, the reference's rho. (The paper puts
   rho_t = lamb sigma_n^2 / sigma_bar_t^2 in front of ||x - x0||^2, with sigma_bar_t the noise
   level of x_t / sqrt(alpha_bar_t), i.e. sigma; the reference's (sigma s)^2 = 1 - alpha_bar_t
   differs from sigma^2 by the factor alpha_bar_t, which matters only at high noise.) In words:
   a Gaussian likelihood of std sigma_n around a Gaussian N(x0, (sigma s)^2 / lamb) -- for VP,
   (sigma s)^2 = 1 - alpha_bar is Var[x_0 | x_t] of a unit-variance prior, so lamb = 1 is the
   natural value when sigma_n is the true noise level.
   * ``linear=False``: one gradient step, x0_hat = x0 - grad ||y - A(x0)||^2 / rho (the reference);
   * ``linear=True``: the exact minimizer (A^T A + rho/2 I)^{-1} (A^T y + rho/2 x0), per row
     (``LinearGaussian.prox``) -- closed form per spectral coordinate when the operator offers
     ``svd``, otherwise conjugate gradients with ``forward`` and ``adjoint`` (no dense matrix is
     ever formed);
3. re-noise: eps_hat = (x/s - x0_hat) / sigma,
   x <- s' (x0_hat + sigma' (sqrt(xi) eps + sqrt(1 - xi) eps_hat)) at the next grid point.

The returned sample is x0_hat + sigma_final * noise at the last grid point (unscaled).

Deviations from the reference code:
* ``linear=True`` crashed (``sqrt`` of a Python int in its progress line) and solved a dense
  d x d system per step (16384^2 for inverse scattering). Here it runs, matrix-free, per item and
  per row.
* The reference's linear mode used rho where its gradient mode implies rho/2: its gradient step
  x0 - grad/rho is the linearization of argmin ||y - A x||^2 + (rho/2) ||x - x0||^2, but its
  exact solve minimized ||y - A x||^2 + rho ||x - x0||^2 (an effective lamb twice as large). Both
  modes here solve the same subproblem, so ``linear=True`` is the exact version of ``False``. No
  published result used the linear mode, since it crashed.
* The linear mode removes the operator's affine offset generically, y_lin = y - A(0) (the
  reference's ``y/unnorm_scale - A(unnorm_shift)``).
* ``sigma_n: null`` takes each item's noise level from the operator (``noise_std``); rho is then
  per item. The reference has one number for the whole test set.
* Non-finite output (the gradient step overshooting) raises ``FloatingPointError``.

The matrix-free linear-Gaussian solves (the proximal map above) are in algo/linear_gaussian.py,
shared with the ``exact_linear`` options of DAPS and PnP-DM.
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from algo.linear_gaussian import LinearGaussian
from inverse_problems.base import Observation
from utils.compat import check_compat
from utils.diffusion import denoise_scaled
from utils.progress import report
from utils.scheduler import Scheduler


class DiffPIR(Algo):
    #: the needs of the default mode (linear=False); __init__ sets the instance's per mode
    requires = frozenset({"gradient"})

    def __init__(
        self,
        net,
        forward_op,
        diffusion_scheduler_config,
        sigma_n: float | None,
        lamb: float,
        xi: float,
        linear: bool = False,
        cg_max_iter: int = 200,
        cg_tol: float = 1e-6,
        compat: str = "corrected",
    ):
        """``compat`` (utils/compat.py): both modes compute the same thing here; the gradient
        mode equals the reference to float rounding, its linear mode crashed (kept fixed)."""
        self.compat = check_compat(compat, "DiffPIR compat")
        self.linear = bool(linear)
        if self.linear:
            self.requires = LinearGaussian.requirements(forward_op)
        else:
            self.requires = frozenset({"gradient"})
        super().__init__(net, forward_op)
        self.scheduler = Scheduler(**diffusion_scheduler_config)
        self.sigma_n = None if sigma_n is None else float(sigma_n)
        self.lamb = float(lamb)
        self.xi = float(xi)
        if not 0.0 <= self.xi <= 1.0:
            raise ValueError(f"xi must be in [0, 1], got {xi}")
        if self.lamb <= 0:
            raise ValueError(f"lamb must be > 0, got {lamb}")
        self.solver = LinearGaussian(forward_op, self.shape, cg_max_iter, cg_tol)

    def noise_level(self, observation: Observation, rows: int) -> torch.Tensor:
        """sigma_n per row (rows,), float64."""
        B = observation.batch
        if self.sigma_n is None:
            std = self.forward_op.noise_std(observation.physics, B).to(torch.float64)
        else:
            std = torch.full((B,), self.sigma_n, dtype=torch.float64)
        return std.to(observation.y.device).repeat_interleave(rows // B)

    # -- sampler ---------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        sched = self.scheduler
        device = observation.y.device
        x = rng.randn(*self.shape).to(device) * sched.sigma_max
        R = x.shape[0]
        sigma_n2 = self.noise_level(observation, R).square()
        data = self.solver.prepare(observation, x.dtype) if self.linear else None
        if not self.linear and torch.any(sigma_n2 <= 0):
            raise ValueError(
                "DiffPIR's gradient data step divides by rho ∝ sigma_n^2, which is 0 here; "
                "give sigma_n > 0 (or use linear=True for a linear operator)"
            )
        view = (-1, *[1] * len(self.shape))
        for i in range(sched.num_steps):
            s, sig = float(sched.scaling_steps[i]), float(sched.sigma_steps[i])
            # Prior step: denoise.
            x0, _ = denoise_scaled(self.net, x, sched, i)
            # Data step.
            rho = (2 * self.lamb * sigma_n2 / (sig * s) ** 2).to(x.dtype)
            if self.linear:
                x0_hat = self.solver.prox(x0, rho / 2, observation, data)
            else:
                grad, loss = self.forward_op.gradient(x0, observation, return_loss=True)
                x0_hat = x0 - grad.to(x.dtype) / rho.reshape(view)
                # The reference logs sqrt of the misfit at the denoised x0 (gradient mode only).
                report(i, sched.num_steps, data_fitting_loss=loss.sqrt())
            # Re-noise to the next level with a mix of fresh and estimated noise.
            s_next, sig_next = float(sched.scaling_steps[i + 1]), float(sched.sigma_steps[i + 1])
            noise = torch.zeros_like(x)
            if self.xi > 0:
                noise = noise + math.sqrt(self.xi) * rng.randn_like(x)
            if self.xi < 1:
                noise = noise + math.sqrt(1 - self.xi) * (x / s - x0_hat) / sig
            x = s_next * (x0_hat + sig_next * noise)
            if self.linear:
                report(i, sched.num_steps)
        bad = ~torch.isfinite(x.flatten(1)).all(1)
        if bool(bad.any()):
            items = sorted({int(r) // (R // observation.batch) for r in bad.nonzero().flatten()})
            raise FloatingPointError(
                f"DiffPIR diverged (non-finite values) for item(s) {items} (batch positions). "
                "The gradient data step x0 - grad/rho overshoots when rho << ||A||^2 (small "
                "sigma_n or lamb); raise lamb or use linear=True for a linear operator."
            )
        return x / float(sched.scaling_steps[-1])
