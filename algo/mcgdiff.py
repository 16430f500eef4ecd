"""Monte Carlo Guided Diffusion, MCGDiff (Cardoso, Janati El Idrissi, Le Corff & Moulines,
"Monte Carlo guided Denoising Diffusion models for Bayesian linear inverse problems", ICLR 2024):
the MCGdiff particle filter with its construction for noisy observations, in SVD coordinates.

With A = U diag(s) V^T and u = V^T x, the first m coordinates are observed:
ybar_j = (U^T y)_j / s_j = u_j + r_j eps, r_j = sigma_y / s_j (sigma_y per item, ``noise_std``).
ybar_j is distributed as the diffused coordinate at the time tau_j with sigma(tau_j) = r_j
(noise-free data: tau_j = 0). The unscaled state u_k has noise level sigma_k; while
sigma_k > r_j coordinate j carries the potential N(u_j; ybar_j, sigma_k^2 - r_j^2) (the forward
noising of ybar_j from tau_j); at tau_j it is pinned to ybar_j and afterwards evolves freely, so
sampling ends at the posterior (exactly, for exact kernels). The transition kernel is DDPM's
ancestral one, N(D + (sigma_{k+1}/sigma_k)^2 (u - D), sigma_{k+1}^2 (1 - sigma_{k+1}^2/sigma_k^2))
(the paper's DDIM kernel with eta = 1), D the denoiser's estimate. Kernel and potentials are
Gaussian, so the optimal proposal and its weight are exact (fully adapted SMC: weight by the
predictive likelihood of the next potentials over the current ones, resample, propagate).

Requires ``linear`` (the offset forward(0) is removed from y) and ``svd``; the pseudo-inverse the
project page lists is not needed.

``compat``: ``reference`` runs the reference's own MCG-Diff (``reference_particles``; equal to it
to 7e-16 on the parity fixtures; ``inference`` returns the first of its equally weighted final
particles); ``corrected`` (the default) is the filter above, with these deviations:
* from the paper: tau_j is used exactly instead of rounded to the grid. A step that crosses tau_j
  is split there with the same denoiser output (two DDPM steps compose into one): the weight
  takes the pin's predictive likelihood, and the coordinate moves from (r_j, ybar_j) to
  sigma_{k+1}. No kappa regulariser and no final reweighting are needed; once all coordinates
  of an item are released its weights stay uniform and it is no longer resampled;
* from the reference code (algo/mcgdiff.py): it uses an Euler-Maruyama kernel with a gain
  factor_{k+1} / (factor_{k+1} + sigma_{k+1}^2) from the *next* step (off by one) and pulls the
  observed coordinates to ybar down to sigma_min whatever sigma_y (the noise-free algorithm
  for noisy data); here the DDPM kernel, the matching gain and the noisy construction above;
* the initial particles are drawn exactly from p_0 x potential with p_0 = N(0, sigma_0^2 I), so
  with uniform weights;
* ``ess_threshold`` (an addition; the default 1 reproduces the papers' resampling at every
  step, skipping only exactly uniform weights): a sample's particles are resampled only when
  their effective sample size falls below ess_threshold x P, and the final particle is drawn by
  the accumulated weights. Resampling every step on long grids lets the particles settle on one
  mode before the weights can tell the modes apart (see configs/tuned/gmm);
* the reference's thin V drops the null space of A (docs/deviations.md); resampling is per
  sample from per-sample streams, in float64; the network runs in chunks of ``batch_size`` rows.
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo
from algo.smc import F64, pick_one, resample, reweight, take
from algo.spectral import denoise_spectral, spectral_observation
from algo.spectral_reference import denoise, reference_spectrum, to_image, to_spectral
from utils.compat import check_compat
from utils.scheduler import Scheduler

TINY = 1e-300


class MCG_diff(Algo):
    requires = frozenset({"linear", "svd"})

    def __init__(
        self,
        net,
        forward_op,
        scheduler_config,
        num_particles: int = 64,
        batch_size: int | None = 128,
        ess_threshold: float = 1.0,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "MCG_diff compat")
        self.scheduler = Scheduler(**scheduler_config)
        self.num_particles = int(num_particles)
        self.batch_size = batch_size
        self.ess_threshold = float(ess_threshold)

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        if self.compat == "reference":
            x = self.reference_particles(observation, num_samples, rng)
            # After its last resampling the reference's particles are equally weighted: the
            # first one is a draw from them (the reference returns all P of its one sample).
            return x[:, 0].to(torch.float32)
        particle_rng = rng.expand(self.num_particles)
        dev, phys = observation.y.device, observation.physics
        B, G, P = observation.batch, num_samples, self.num_particles
        y_spec, s, sigma_y, observed = spectral_observation(
            self.forward_op, observation, self.shape
        )
        m = s.shape[1]
        obs = observed[:, None, None]  # (B, 1, 1, m)
        s_safe = torch.where(observed, s, 1.0)
        ybar = torch.where(observed, y_spec / s_safe, 0.0)[:, None, None]
        r2 = torch.where(observed, (sigma_y[:, None] / s_safe) ** 2, 0.0)[:, None, None]
        sig = self.scheduler.sigma_steps
        d = math.prod(self.shape)

        def noise():
            return particle_rng.randn(d, dtype=F64).to(dev).reshape(B, G, P, d)

        # pi_0 with p_0 = N(0, sigma_0^2 I), sampled exactly: the potential N(u; ybar, sigma_0^2 -
        # r^2) before tau_j, the coupling N(ybar; u, r^2 - sigma_0^2) when tau_j lies above sigma_0.
        V = (sig[0] ** 2 - r2).abs()
        gain = torch.where(obs, sig[0] ** 2 / (sig[0] ** 2 + V).clamp_min(TINY), 0.0)
        u = sig[0] * noise()
        u[..., :m] = gain * ybar + torch.sqrt(1 - gain) * u[..., :m]
        log_W = torch.zeros(B, G, P, dtype=F64, device=dev)
        for k in range(self.scheduler.num_steps):
            D = denoise_spectral(
                self.net, self.forward_op, phys, u, sig[k], self.shape, self.batch_size
            )
            s2, s2_next = sig[k] ** 2, sig[k + 1] ** 2
            mean = D + (s2_next / s2) * (u - D)
            var = max(s2_next * (1 - s2_next / s2), 0.0)  # 0 on a repeated last sigma
            # Coordinates guided at this level, at the next, and pinned inside the step.
            now = obs & (r2 < s2)
            nxt = obs & (r2 <= s2_next)
            cross = now & ~nxt
            V_now, V_next = (s2 - r2).clamp_min(TINY), s2_next - r2
            # Crossing coordinates: DDPM step from sigma_k to r_j (same D), pinned at ybar there.
            r2_safe = torch.where(cross, r2, s2)
            mean_r = D[..., :m] + (r2_safe / s2) * (u[..., :m] - D[..., :m])
            var_r = (r2_safe * (1 - r2_safe / s2)).clamp_min(TINY)
            # Weight: predictive likelihood of the next potentials over the current ones.
            err = (ybar - mean[..., :m]).square() / (var + V_next).clamp_min(TINY)
            log_w = -0.5 * (
                torch.where(nxt, err, 0.0).sum(-1)
                + torch.where(cross, (ybar - mean_r).square() / var_r, 0.0).sum(-1)
                - torch.where(now, (ybar - u[..., :m]).square() / V_now, 0.0).sum(-1)
            )
            uniforms = particle_rng.rand(dtype=F64).to(dev).reshape(B, G, P)
            idx, log_W = reweight(log_W, log_w, uniforms, self.ess_threshold)
            mean, D = take(mean, idx), take(D, idx)
            # Optimal proposal on guided coordinates (kernel x potential); DDPM step from the pin
            # (r_j, ybar_j) to sigma_{k+1} on crossing ones; the kernel elsewhere.
            gain = torch.where(nxt, var / torch.as_tensor(var + V_next).clamp_min(TINY), 0.0)
            gain = torch.where(nxt & (var + V_next <= 0), 1.0, gain)
            mean_obs = (1 - gain) * mean[..., :m] + gain * ybar  # exactly ybar at gain 1
            std_obs = torch.sqrt(var * (1 - gain))
            pull = s2_next / r2_safe
            mean_obs = torch.where(cross, D[..., :m] + pull * (ybar - D[..., :m]), mean_obs)
            std_obs = torch.where(cross, torch.sqrt((s2_next * (1 - pull)).clamp_min(0)), std_obs)
            std = torch.full_like(mean, math.sqrt(var))
            mean[..., :m], std[..., :m] = mean_obs, std_obs
            u = mean + std * noise()
        x = pick_one(u, log_W, rng)
        x = self.forward_op.V(x, **phys)
        return x.reshape(B * G, *self.shape).to(torch.float32)

    def _gain(self, k: int) -> float:
        """The reference's K(k) = factor_k / (factor_k + sigma_k^2); 1 at the end of the grid."""
        sched = self.scheduler
        if k == sched.num_steps:
            return 1.0
        f = float(sched.factor_steps[k])
        return f / (f + float(sched.sigma_steps[k]) ** 2)

    @torch.no_grad()
    def reference_particles(self, observation, num_samples, rng):
        """The reference's MCG-Diff (compat=reference): all P particles of every sample,
        (rows, P, *shape) float64, from one stream per sample (``rng``'s rows).

        Its algorithm as written: an Euler-Maruyama kernel x' = s_f x + factor score (+
        sqrt(factor) e off the mask); the observed coordinates pulled to M U^T y' / S with the
        gain K(k + 1) = factor_{k+1} / (factor_{k+1} + sigma_{k+1}^2) of the *next* step and
        noise sqrt(K) sigma', down to sigma_min whatever sigma_y (the noise-free algorithm);
        weights exp(clamp(w - min w, max 60)) with w = -|M(y - x')|^2 / (2 (sigma'^2 + factor))
        + |M(y - x)|^2 / (2 sigma^2); multinomial resampling at every step (from ``rng``'s
        uniforms by inverse CDF); the start sigma_max z off the mask and sigma_max K(0) z on it;
        the thin basis. The network runs in chunks of ``batch_size`` rows."""
        op, phys, sched = self.forward_op, observation.physics, self.scheduler
        P = self.num_particles
        sp = reference_spectrum(op, observation, self.shape, num_samples)
        M, n = sp.M[:, None], sp.n  # (R, 1, n)
        target = sp.over_s(sp.yt)[:, None]
        sig = [float(v) for v in sched.sigma_steps]
        dev = sp.S.device

        def noise():
            return rng.randn(P, n, dtype=F64).to(dev)

        # sigma_max z is formed in float32, as in the reference (its draws are float32).
        z = noise()
        smax_z = (z.float() * float(sched.sigma_max)).to(F64)
        x = smax_z * (1 - M) + M * float(sched.sigma_max) * self._gain(0) * z
        for k in range(sched.num_steps):
            sigma, sigma_next = sig[k], sig[k + 1]
            factor, s_f = float(sched.factor_steps[k]), float(sched.scaling_factor[k])
            s_k = float(sched.scaling_steps[k])
            img = to_image(op, x, phys, self.shape, sp.d) / s_k
            den = denoise(self.net, img, sigma, self.shape, self.batch_size)
            den = to_spectral(op, den, phys, n, len(self.shape))
            score = (den - x / s_k) / sigma**2 / s_k
            x_next = x * s_f + factor * score
            log_w = -(M * (target - x_next)).square().sum(-1) / (2 * (sigma_next**2 + factor))
            log_w = log_w + (M * (target - x)).square().sum(-1) / (2 * sigma**2)
            log_w = (log_w - log_w.amin(-1, keepdim=True)).clamp_max(60)
            idx = resample(log_w, rng.rand(P, dtype=F64))
            x_next = torch.gather(x_next, 1, idx[..., None].expand(-1, -1, n))
            K = self._gain(k + 1)
            masked = K * target + (1 - K) * x_next + math.sqrt(K) * sigma_next * noise()
            unmasked = x_next + math.sqrt(factor) * noise()
            x = M * masked + (1 - M) * unmasked
        return to_image(op, x, phys, self.shape, sp.d)


MCGDiff = MCG_diff
