"""Filtering Posterior Sampling with sequential Monte Carlo, FPS-SMC (Dou & Song, "Diffusion
Posterior Sampling for Linear Inverse Problem Solving: A Filtering Perspective", ICLR 2024): the
y-sequence and the particle filter of FPS-SMC, in the spectral coordinates of the operator's SVD.

With A = U diag(s) V^T the problem is an inpainting one in u = V^T x: the first m coordinates are
observed, ybar_j = (U^T y)_j / s_j = u_j + r_j eps with r_j = sigma_y / s_j. Everything runs on the
unscaled state u_k = x_k / s(t_k) (noise level sigma_k), which makes the VP scaling drop out.

1. The noisy y-sequence: v_0 = ybar + sigma_0 eps, then the DDIM-like recursion with ybar as the
   clean point, v_{k+1} = ybar + c_k (v_k - ybar) + eta sigma_{k+1} eps,
   c_k = sqrt(1 - eta^2) sigma_{k+1} / sigma_k (so v_k ~ N(ybar, sigma_k^2)); v_k observes the
   particles' u_k with noise r_j (the forward noise is shared by x and y).
2. The particle filter: the prior transition is DDIM's, N(D + c_k (u_k - D), eta^2 sigma_{k+1}^2)
   with D the denoiser's estimate; v_{k+1} | u_{k+1} ~ N(u_{k+1, obs}, r^2). Both are Gaussian, so
   the locally optimal proposal p(u_{k+1} | u_k, v_{k+1}) and its weight p(v_{k+1} | u_k) are exact:
   the filter is fully adapted (weight, resample, then propagate).

The network is called on V u (in chunks of ``batch_size`` rows); every sample runs its own filter
of ``num_particles`` particles and returns one of them.

Requires ``linear`` (the offset forward(0) is removed from y) and ``svd`` (U^T, V, V^T, s). The
paper's method needs only a linear A, but its Gaussian proposals then need solves with
A A^T + c I; the SVD makes them diagonal, as in the reference.

``compat``: ``reference`` runs the reference's own FPS-SMC (``reference_particles``; equal to it to
7e-15 on the parity fixtures; ``inference`` returns the first of its equally weighted final
particles); ``corrected`` (the default) is the filter above, which deviates from the reference
code (algo/fps.py) as follows:
* the particle step k uses the y-sequence at the level it moves *to* (v_{k+1}); the reference
  conditions on the previous level's y (an off-by-one);
* the observation noise of ybar_j is r_j = sigma_y / s_j per coordinate (the reference uses
  sigma_y for every coordinate, floored at 1e-4) and sigma_y is per item (``noise_std``);
  sigma_y = 0 is exact here (no floor);
* the reference evaluates the prior transition from the *scaled* state minus the unscaled D (they
  differ under VP scaling); here everything is unscaled;
* the filter starts from p(u_0 | v_0) under u_0 ~ N(0, sigma_0^2) (the reference starts from
  the y-sequence's own noise), and weights come before propagation (fully adapted: the weights
  after a resampling step are uniform);
* ``ess_threshold`` (an addition; the default 1 reproduces the papers' resampling at every
  step, skipping only exactly uniform weights): a sample's particles are resampled only when
  their effective sample size falls below ess_threshold x P, and the final particle is drawn by
  the accumulated weights. Resampling every step on long grids lets the particles settle on one
  mode before the weights can tell the modes apart (see configs/tuned/gmm);
* one particle per sample is returned (the reference returns all particles of its single run);
* resampling uses per-sample streams (batch-invariant) and float64 log-weights; V is the full
  d x d basis (the reference's thin V drops the null space, docs/deviations.md).

Note (not a deviation): ``eta`` is a fixed re-noising fraction per step, as in the paper's code
(its ``c_rate``), not DDIM's eta, so the kernel is not a consistent discretisation of the reverse
process: on the Gaussian-mixture test the bias grows with the number of steps and stops the
error from falling with particles at eta 0.85; eta 0.5 converges there (configs/tuned/gmm).
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo, singular_values
from algo.smc import pick_one, resample, reweight, take
from algo.spectral import denoise_spectral, spectral_observation
from algo.spectral_reference import denoise, reference_spectrum, to_image, to_spectral
from utils.compat import check_compat
from utils.scheduler import Scheduler

F64 = torch.float64


# -- helpers shared by the SMC samplers (FPS, MCGDiff, DDSMC) -------------------------------------


# -- FPS ------------------------------------------------------------------------------------------
class FPS(Algo):
    requires = frozenset({"linear", "svd"})

    def __init__(
        self,
        net,
        forward_op,
        scheduler_config,
        eta: float = 0.85,
        num_particles: int = 20,
        batch_size: int | None = None,
        ess_threshold: float = 1.0,
        compat: str = "corrected",
        reference_weights: str = "auto",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "FPS compat")
        if reference_weights not in ("auto", "data", "uniform"):
            raise ValueError(
                f"reference_weights must be auto, data or uniform, got {reference_weights!r}"
            )
        self.reference_weights = reference_weights
        self.scheduler = Scheduler(**scheduler_config)
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        self.eta = float(eta)
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
        ybar = torch.where(observed, y_spec / torch.where(observed, s, 1.0), 0.0)[:, None, None]
        r2 = torch.where(observed, (sigma_y[:, None] / torch.where(observed, s, 1.0)) ** 2, 0.0)
        r2 = r2[:, None, None]
        sig = self.scheduler.sigma_steps
        d = math.prod(self.shape)

        def noise(stream, n):
            return stream.randn(n, dtype=F64).to(dev).reshape(B, G, -1, n)

        # Start: v_0 ~ N(ybar, sigma_0^2); u_0 ~ N(0, sigma_0^2 I) conditioned on v_0.
        v = ybar + sig[0] * noise(rng, m)
        u = sig[0] * noise(particle_rng, d)
        gain0 = torch.where(obs, sig[0] ** 2 / (sig[0] ** 2 + r2), 0.0)
        u[..., :m] = gain0 * v + torch.sqrt(1 - gain0) * u[..., :m]
        log_W = torch.zeros(B, G, P, dtype=F64, device=dev)
        for k in range(self.scheduler.num_steps):
            D = denoise_spectral(
                self.net, self.forward_op, phys, u, sig[k], self.shape, self.batch_size
            )
            c = math.sqrt(1 - self.eta**2) * sig[k + 1] / sig[k]
            tau2 = (self.eta * sig[k + 1]) ** 2
            mean = D + c * (u - D)
            # Next level of the y-sequence (shared by the sample's particles).
            v = ybar + c * (v - ybar) + self.eta * sig[k + 1] * noise(rng, m)
            # Weight p(v_{k+1} | u_k) = N(v; mean_obs, tau^2 + r^2); resample.
            prec = torch.where(obs, 1.0 / (tau2 + r2), 0.0)
            log_w = -0.5 * ((v - mean[..., :m]).square() * prec).sum(-1)
            uniforms = particle_rng.rand(dtype=F64).to(dev).reshape(B, G, P)
            idx, log_W = reweight(log_W, log_w, uniforms, self.ess_threshold)
            mean = take(mean, idx)
            # Propagate with p(u_{k+1} | u_k, v_{k+1}) (Gaussian product on observed coords).
            gain = tau2 * prec
            mean[..., :m] = (1 - gain) * mean[..., :m] + gain * v
            std = torch.full_like(mean, math.sqrt(tau2))
            std[..., :m] = torch.sqrt(tau2 * (1 - gain))
            u = mean + std * noise(particle_rng, d)
        x = pick_one(u, log_W, rng)
        x = self.forward_op.V(x, **phys)
        return x.reshape(B * G, *self.shape).to(torch.float32)

    @torch.no_grad()
    def reference_particles(self, observation, num_samples, rng):
        """The reference's FPS-SMC (compat=reference): all P particles of every sample,
        (rows, P, *shape) float64, from one stream per sample (``rng``'s rows).

        Its algorithm as written: the y-sequence starts at M z and runs the DDIM recursion
        towards M U^T y' / S (stored scaled); the particles all start at the same z (the scaled
        state); the prior mean x0 + c (x_k - x0) mixes the scaled state with the unscaled x0;
        step k conditions on the y-sequence's level k (not k + 1); sigma_y = sigma_noise /
        unnorm_scale floored at 1e-4, the same for every coordinate (not sigma_y / S); the
        proposal is the Gaussian product in the scaled variable and the weight
        p(y | x') p(x' | x) / q(x'), with the reference's mixed scaled/unscaled terms; multinomial
        resampling at every step (from ``rng``'s uniforms by inverse CDF); the thin basis.

        Its weights are lost to rounding when its thin basis holds directions of numerically
        zero singular value (inverse scattering: 91 of 1024 below 1e-12 at 32^2): its
        y-sequence holds U^T y' / S there (~1e12), whose squares swamp the particles' log-weights
        in float64, and it resamples uniformly. ``reference_weights`` 'auto' (the default)
        copies that when the operator's SVD is truncated numerically (``svd_rtol``) and the thin
        basis is larger than its rank (the directions beyond it are the ones); exactly zero
        singular values (the exact test problems) give NaN in the reference (0 / 0), a crash
        that stays fixed: the weights are kept. 'data' keeps them, 'uniform' drops them."""
        op, phys, sched = self.forward_op, observation.physics, self.scheduler
        P = self.num_particles
        sp = reference_spectrum(op, observation, self.shape, num_samples)
        M, n = sp.M[:, None], sp.n  # (R, 1, n)
        sigma_y = (sp.sigma_noise / sp.scale).clamp_min(1e-4)[:, None]  # (R, 1, 1)
        target = torch.where(sp.S > 0, sp.yt / torch.where(sp.S > 0, sp.S, 1.0), 0.0)
        sig = [float(v) for v in sched.sigma_steps]
        sc = [float(v) for v in sched.scaling_steps]
        keep = math.sqrt(1 - self.eta**2)
        dev = sp.S.device
        rank = singular_values(op, observation).shape[1]
        truncated = getattr(op, "svd_rtol", None) is not None  # numerically truncated SVD
        uniform = self.reference_weights == "uniform" or (
            self.reference_weights == "auto" and truncated and n > rank
        )

        def noise(*shape):
            return rng.randn(*shape, dtype=F64).to(dev)

        # sigma_max z is formed in float32, as in the reference (its draws are float32).
        z = (noise(n).float() * float(sched.sigma_max)).to(F64)
        y = M[:, 0] * z
        ys = [y * sc[0]]
        for k in range(sched.num_steps):
            y = (
                target
                + keep * sig[k + 1] / sig[k] * (y - target)
                + self.eta * sig[k + 1] * noise(n)
            )
            ys.append(y * sc[k + 1])
        x = z[:, None].expand(-1, P, -1).clone()
        for k in range(sched.num_steps):
            sigma, sigma_next, s_next = sig[k], sig[k + 1], sc[k + 1]
            img = to_image(op, x, phys, self.shape, sp.d) / sc[k]
            x0 = to_spectral(
                op,
                denoise(self.net, img, sigma, self.shape, self.batch_size),
                phys,
                n,
                len(self.shape),
            )
            prior = x0 + keep * sigma_next / sigma * (x - x0)
            tau2 = (self.eta * sigma_next) ** 2
            obs_var = sigma_y.square() * s_next**2
            var = 1.0 / (1.0 / tau2 + M / obs_var)
            mean = var * (prior / tau2 + M * ys[k][:, None] / obs_var)
            x = s_next * (noise(P, n) * var.sqrt() + mean)
            log_y = -(ys[k][:, None] - M * x).square().sum(-1) / (2 * obs_var[..., 0])
            log_x = -(prior - x).square().sum(-1) / (2 * tau2)
            log_q = -((mean - x) / var.sqrt()).square().sum(-1) / 2
            log_w = log_x + log_y - log_q
            if uniform:
                log_w = torch.zeros_like(log_w)
            idx = resample(log_w - log_w.amax(-1, keepdim=True), rng.rand(P, dtype=F64))
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, n))
        return to_image(op, x, phys, self.shape, sp.d)
