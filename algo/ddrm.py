"""Denoising Diffusion Restoration Models (Kawar, Elad, Ermon and Song, "Denoising Diffusion
Restoration Models", NeurIPS 2022), Eq. 7-8 in their variance-exploding form x_t = x_0 + sigma_t e.

Work in the spectral coordinates of A = U diag(s) Vt: xbar = Vt x, and for an observed coordinate
j (s_j > 0) ybar_j = (U^T y)_j / s_j, whose noise has std sigma_y / s_j. Start (Eq. 7) from
xbar_j ~ N(ybar_j, sigma_T^2 - (sigma_y / s_j)^2) on observed coordinates and N(0, sigma_T^2)
elsewhere. Each step i (sigma = sigma_i -> sigma' = sigma_{i+1}) denoises, xbar0 = Vt D(x; sigma),
and draws (Eq. 8):

* unobserved: xbar0 + sqrt(1 - eta^2) sigma' (xbar - xbar0) / sigma + eta sigma' e;
* observed, sigma' < sigma_y / s_j: xbar0 + sqrt(1 - eta^2) sigma' (ybar - xbar0) / (sigma_y / s_j)
  + eta sigma' e;
* observed, sigma' >= sigma_y / s_j: (1 - eta_b) xbar0 + eta_b ybar
  + sqrt(sigma'^2 - eta_b^2 (sigma_y / s_j)^2) e;

then x = V xbar. One network evaluation per step (100 with the reference's grid).

``compat``: ``reference`` runs the reference's own DDRM (``reference_samples``: its thin basis,
units and draws; equal to it to 4e-15 on the parity fixtures); ``corrected`` (the default) is the
version above, which deviates from the reference code as follows:
* The full d x d basis V is used, so the null space of A is sampled (the reference's thin V drops
  it: docs/deviations.md).
* sigma_y is the operator's per-item ``noise_std`` (the reference uses one sigma_noise /
  unnorm_scale), and the observation's offset is removed generically, y_lin = y - A(0), which is
  the reference's ``y / unnorm_scale - A(unnorm_shift)`` for any affine operator.
* Coordinates with s_j = 0 are treated as unobserved; an observed coordinate noisier than the
  starting level (sigma_y / s_j > sigma_T) starts from N(0, sigma_T^2), where Eq. 7 is undefined.
* The state is kept unscaled (x_0 + sigma e) and the network is called as D(x; sigma) on any
  ``Scheduler`` grid; the output is the last state, at ``sigma_final`` (= sigma_min by default,
  like the reference's grid, whose last step goes from sigma_min to sigma_min).
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from algo.spectral import scaled_spectral_observation
from algo.spectral_reference import denoise, reference_spectrum, to_image, to_spectral
from utils.compat import check_compat
from utils.scheduler import Scheduler


class DDRM(Algo):
    requires = frozenset({"linear", "svd"})

    def __init__(
        self,
        net,
        forward_op,
        scheduler_config,
        eta: float = 0.85,
        eta_b: float = 1.0,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "DDRM compat")
        self.scheduler = Scheduler(**scheduler_config)
        self.eta = float(eta)
        self.eta_b = float(eta_b)

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        if self.compat == "reference":
            return self.reference_samples(observation, num_samples, rng).to(torch.float32)
        op, phys, sched = self.forward_op, observation.physics, self.scheduler
        device = observation.y.device
        ybar, noise, observed = scaled_spectral_observation(
            op, observation, self.shape, num_samples
        )
        m, d = ybar.shape[1], math.prod(self.shape)
        sigmas = [float(s) for s in sched.sigma_steps]
        # sigma_y / s_j where it is a usable divisor (observed and noisy), else 1.
        divisor = torch.where(observed & (noise > 0), noise, torch.ones_like(noise))
        noise_obs = torch.where(observed, noise, torch.zeros_like(noise))

        # Eq. 7: the starting spectral state (float64; the network sees float32 images).
        eps = rng.randn(d).to(device, torch.float64)
        zbar = sigmas[0] * eps
        start_obs = observed & (noise < sigmas[0])
        spread = (sigmas[0] ** 2 - torch.where(start_obs, noise, 0.0).square()).sqrt()
        zbar[:, :m] = torch.where(start_obs, ybar + spread * eps[:, :m], zbar[:, :m])

        for i in range(sched.num_steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            x = op.V(zbar, **phys).reshape(-1, *self.shape).float()
            x0 = self.net(x, torch.as_tensor(sigma, device=device))
            xbar0 = op.Vt(x0.to(torch.float64), **phys)
            eps = rng.randn(d).to(device, torch.float64)
            keep = math.sqrt(1 - self.eta**2) * sigma_next
            fresh = self.eta * sigma_next * eps
            # Eq. 8, unobserved: a DDIM-like step (observed entries are overwritten below).
            znext = xbar0 + keep * (zbar - xbar0) / sigma + fresh
            o0 = xbar0[:, :m]
            # Observed, sigma' < sigma_y / s_j: move towards ybar with the remaining noise.
            below = o0 + keep * (ybar - o0) / divisor + fresh[:, :m]
            # Observed, sigma' >= sigma_y / s_j: ybar plus the missing part of the noise.
            var = (sigma_next**2 - (self.eta_b * noise_obs).square()).clamp_min(0)
            above = (1 - self.eta_b) * o0 + self.eta_b * ybar + var.sqrt() * eps[:, :m]
            obs_next = torch.where(noise <= sigma_next, above, below)
            znext[:, :m] = torch.where(observed, obs_next, znext[:, :m])
            zbar = znext
        return op.V(zbar, **phys).reshape(-1, *self.shape).float()

    @torch.no_grad()
    def reference_samples(self, observation, num_samples, rng):
        """The reference's DDRM (compat=reference): its thin basis and mask M = S > 1e-3,
        sigma_y = sigma_noise / unnorm_scale for every item, three independent draws per step
        (the unobserved update, each observed branch), and the noise-free shortcut
        (sigma_y <= 1e-5: the below-noise branch is 0). A start below the observation's noise
        (sigma_max < sigma_y / S), NaN in the reference, starts at the observation here."""
        op, phys, sched = self.forward_op, observation.physics, self.scheduler
        sp = reference_spectrum(op, observation, self.shape, num_samples)
        M, S, n = sp.M, sp.S, sp.n
        sigma_y = sp.sigma_noise / sp.scale  # (R, 1)
        yt = sp.over_s(sp.yt)
        var_y = sp.over_s(sp.over_s(sigma_y.square().expand_as(S)))  # M sigma_y^2 / S^2
        sigmas = [float(v) for v in sched.sigma_steps]
        sigma_max = float(sched.sigma_max)
        keep = math.sqrt(1 - self.eta**2)

        z = rng.randn(n, dtype=torch.float64).to(S.device, torch.float64)
        start = (sigma_max**2 - var_y).clamp_min(0).sqrt()
        x = M * (yt + z * start) + (1 - M) * z * sigma_max / float(sched.scaling_steps[0])
        for i in range(sched.num_steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            img = to_image(op, x, phys, self.shape, sp.d)
            x0 = to_spectral(
                op, denoise(self.net, img, sigma, self.shape), phys, n, len(self.shape)
            )
            unobserved = x0 + keep * sigma_next / sigma * (x - x0)
            unobserved = unobserved + self.eta * sigma_next * rng.randn(n, dtype=torch.float64).to(
                x
            )
            # Observed above the noise: S >= sigma_y / sigma' (false where S = 0).
            above = (S >= sigma_y / sigma_next) & (S > 0)
            # The reference forms mask * sigma_y^2 in float32 (a bool tensor times a float).
            var_above = torch.where(above, sigma_y.square().float().double() / S.square(), 0.0)
            spread = (sigma_next**2 - var_above).clamp_min(0).sqrt()
            obs_above = (
                x0 * (1 - self.eta_b)
                + self.eta_b * yt
                + spread * rng.randn(n, dtype=torch.float64).to(x)
            )
            noisy = sigma_y > 1e-5  # (R, 1); the reference tests its one scalar sigma_y
            obs_below = torch.zeros_like(x)
            if bool(noisy.any()):
                pull = keep * sigma_next * S / torch.where(noisy, sigma_y, 1.0)
                fresh = self.eta * sigma_next * rng.randn(n, dtype=torch.float64).to(x)
                obs_below = torch.where(noisy, x0 + pull * (yt - x0) + fresh, 0.0)
            x = M * torch.where(above, obs_above, obs_below) + (1 - M) * unobserved
        return to_image(op, x, phys, self.shape, sp.d)
