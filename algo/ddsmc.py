"""Decoupled Diffusion Sequential Monte Carlo, DDSMC (Ekström Kelvinius, Zhao & Lindsten,
"Solving Linear-Gaussian Bayesian Inverse Problems with Decoupled Diffusion Sequential Monte
Carlo", ICML 2025, arXiv:2502.06379), for a general A through its SVD; added to the reference in
its PR #13.

In spectral coordinates u = V^T x (A = U diag(s) V^T; the first m coordinates observed,
y' = U^T y = s u_obs + sigma_y eps), on the annealing grid sigma_0 > ... > sigma_N (unscaled):

* reconstruction x0_hat = f(u_k): Tweedie, D(u_k; sigma_k), or the probability-flow ODE from
  sigma_k to the end of ``diffusion_scheduler_config`` (``recon_fn='ode'``);
* decoupled prior transition (generalised DAPS): with a = sigma_{k+1}^2, delta = sigma_k^2 - a,
  q(u_{k+1} | u_k) = N(mf x0_hat + (1 - mf) u_k, a mf), mf = delta / (eta a + delta)
  (eta = 0: DAPS's N(x0_hat, sigma_{k+1}^2); eta = 1: the DDPM ancestral kernel);
* likelihood surrogate L_k(u_k) = N(y'; s x0_hat, sigma_y^2 + rho_k^2 s^2), i.e. x0 | u_k
  ~ N(x0_hat, rho_k^2 I), with rho_k from its own schedule (``rho_scheduler_config``);
* targets pi_k ∝ L_k(u_k) prod q; the proposal is the exact conditional of u_{k+1} given y' in
  that Gaussian model: x0 | x0_hat, y' ~ N(mu, M^{-1}) (per coordinate), then
  u_{k+1} ~ N(mf mu + (1 - mf) u_k, a mf - mf^2 rho_k^2 + mf^2 M^{-1});
* weights L_{k+1}(u_{k+1}) q(u_{k+1} | u_k) / (L_k(u_k) proposal(u_{k+1} | u_k)), resampling at
  every step (see ``ess_threshold``); the last target uses the exact likelihood
  N(y'; s u_N, sigma_y^2), and one particle per sample is drawn by the final weights.

The method is exact for the prior that the decoupled chain defines. With Tweedie reconstructions
that is the diffusion prior only for eta = 1 (DDPM's kernel); with eta < 1 the chain contracts
towards x0_hat too fast, and on the Gaussian-mixture test the error then stops falling with more
particles (configs/tuned/gmm/ddsmc.yaml).

Requires ``linear`` (the offset forward(0) is removed from y) and ``svd``. sigma_y is per item
(``noise_std``); the final exact likelihood floors it at 1e-4 (only matters for noise-free data).

``compat``: ``reference`` runs the reference's own DDSMC (``reference_samples``: its noise units,
last step and thin basis; equal to it to 7e-15 on the parity fixtures; Tweedie reconstructions
only); ``corrected`` (the default) is the sampler above, which deviates from the reference code
(PR #13, algo/ddsmc.py) as follows:
* a last step to sigma = 0 moves to x0_hat, the target transition's Dirac (the reference moves to
  the rho-posterior mean but weights the move as if it were the target's);
* ``rho_scheduler_config`` may be omitted: then rho_k = sigma_k (the reference's default {} makes a
  10-step schedule that does not match the annealing grid); a mismatched length is an error;
* only ``sigma_steps`` of the annealing scheduler are used (the state is unscaled);
* ``ess_threshold`` (an addition; the default 1 reproduces the papers' resampling at every
  step, skipping only exactly uniform weights): a sample's particles are resampled only when
  their effective sample size falls below ess_threshold x P, and the final particle is drawn by
  the accumulated weights. Resampling every step on long grids lets the particles settle on one
  mode before the weights can tell the modes apart (see configs/tuned/gmm);
* per-sample random streams and per-sample resampling groups (batch-invariant), float64
  log-weights; V is the full d x d basis (the reference's thin V drops the null space,
  docs/deviations.md); the network runs in chunks of ``batch_size`` rows; ``verbose`` is
  accepted and ignored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from algo.base import Algo, chunked
from algo.smc import F64, RESAMPLING, pick_one, resample, reweight, take
from algo.spectral import denoise_spectral, spectral_observation
from algo.spectral_reference import denoise, reference_spectrum, to_image, to_spectral
from utils.compat import check_compat
from utils.diffusion import sample
from utils.scheduler import Scheduler

TINY = 1e-300
SIGMA_Y_FLOOR = 1e-4


class DDSMC(Algo):
    requires = frozenset({"linear", "svd"})

    def __init__(
        self,
        net,
        forward_op,
        smc_config,
        eta: float,
        annealing_scheduler_config,
        rho_scheduler_config=None,
        diffusion_scheduler_config=None,
        recon_fn: str = "tweedie",
        verbose: bool = False,
        batch_size: int | None = None,
        ess_threshold: float = 1.0,
        compat: str = "corrected",
    ):
        super().__init__(net, forward_op)
        self.compat = check_compat(compat, "DDSMC compat")
        self.num_particles = int(smc_config["num_particles"])
        # ``resampling_method`` is the reference's key (configs/algorithm/ddsmc.yaml there).
        method = smc_config.get("resampling", smc_config.get("resampling_method", "multinomial"))
        self.resampling = str(method)
        if self.resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {self.resampling!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.annealing = Scheduler(**annealing_scheduler_config)
        sigma = self.annealing.sigma_steps
        if (np.diff(sigma) >= 0).any():
            raise ValueError("the annealing sigmas must strictly decrease")
        if rho_scheduler_config:
            rho = Scheduler(**rho_scheduler_config)
            if rho.num_steps != self.annealing.num_steps:
                raise ValueError(
                    f"rho schedule has {rho.num_steps} steps, the annealing schedule "
                    f"{self.annealing.num_steps}"
                )
            self.rho = [float(r) for r in rho.sigma_steps[:-1]]
        else:
            self.rho = [float(r) for r in sigma[:-1]]
        recon_fn = recon_fn.lower()
        if recon_fn not in ("tweedie", "ode"):
            raise ValueError(f"recon_fn must be 'tweedie' or 'ode', got {recon_fn!r}")
        # One probability-flow ODE grid per annealing level (None: Tweedie's estimate).
        self.ode = [None] * self.annealing.num_steps
        if recon_fn == "ode":
            cfg = dict(diffusion_scheduler_config or {})
            for k, s in enumerate(sigma[:-1]):
                if s > cfg.get("sigma_min", 0.01):
                    self.ode[k] = Scheduler(**{**cfg, "sigma_max": float(s)})
        if self.compat == "reference" and recon_fn == "ode":
            raise NotImplementedError("compat=reference reproduces DDSMC's Tweedie reconstruction")
        self.verbose = bool(verbose)
        self.batch_size = batch_size
        self.ess_threshold = float(ess_threshold)

    def reconstruct(self, u, k, phys):
        sched = self.ode[k]
        if sched is None:
            sig = self.annealing.sigma_steps[k]
            return denoise_spectral(
                self.net, self.forward_op, phys, u, sig, self.shape, self.batch_size
            )
        x = self.forward_op.V(u.reshape(-1, u.shape[-1]), **phys).reshape(-1, *self.shape)
        x = x.to(torch.float32) * float(sched.scaling_steps[0])
        x0 = chunked(lambda part: sample(self.net, part, sched), x, self.batch_size)
        x0 = x0.to(F64) / float(sched.scaling_steps[-1])
        return self.forward_op.Vt(x0, **phys).reshape(u.shape)

    @torch.no_grad()
    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, num_samples, rng)
        if self.compat == "reference":
            return self.reference_samples(observation, num_samples, rng).to(torch.float32)
        particle_rng = rng.expand(self.num_particles)
        dev, phys = observation.y.device, observation.physics
        B, G, P = observation.batch, num_samples, self.num_particles
        y_spec, s, sigma_y, observed = spectral_observation(
            self.forward_op, observation, self.shape
        )
        m = s.shape[1]
        obs = observed[:, None, None]  # (B, 1, 1, m)
        y_spec, s = y_spec[:, None, None], s[:, None, None]
        sy2 = sigma_y.square()[:, None, None, None]
        sig = self.annealing.sigma_steps
        d = math.prod(self.shape)

        def log_lik(x0, rho2, floor=0.0):
            """log N(y'; s x0, sigma_y^2 + rho^2 s^2) up to a per-item constant."""
            var = (sy2 + rho2 * s.square()).clamp_min(max(floor, TINY))
            r2 = torch.where(obs, (s * x0[..., :m] - y_spec).square() / var, 0.0)
            return -0.5 * r2.sum(-1)

        u = sig[0] * particle_rng.randn(d, dtype=F64).to(dev).reshape(B, G, P, d)
        carry = torch.zeros(B, G, P, dtype=F64, device=dev)  # log q/proposal - log L_{k-1}
        log_W = torch.zeros(B, G, P, dtype=F64, device=dev)
        for k in range(self.annealing.num_steps):
            x0 = self.reconstruct(u, k, phys)
            log_l = log_lik(x0, self.rho[k] ** 2)
            uniforms = particle_rng.rand(dtype=F64).to(dev).reshape(B, G, P)
            idx, log_W = reweight(
                log_W, log_l + carry, uniforms, self.ess_threshold, self.resampling
            )
            u, x0, log_l = take(u, idx), take(x0, idx), take(log_l, idx)
            # Proposal: the decoupled transition conditioned on y' through x0 ~ N(x0_hat, rho^2).
            a = sig[k + 1] ** 2
            delta = sig[k] ** 2 - a
            mf = delta / (self.eta * a + delta)
            if a == 0:  # the target transition is a Dirac at x0_hat
                u, carry = x0, -log_l
                continue
            rho2 = self.rho[k] ** 2
            den = (s.square() * rho2 + sy2).clamp_min(TINY)
            mu = torch.where(obs, (rho2 * s * y_spec + sy2 * x0[..., :m]) / den, x0[..., :m])
            m_inv = torch.where(obs, rho2 * sy2 / den, rho2)
            trans_mean = mf * x0 + (1 - mf) * u
            trans_var = a * mf
            prop_mean = trans_mean.clone()
            prop_mean[..., :m] = mf * mu + (1 - mf) * u[..., :m]
            prop_var = (trans_var - mf**2 * rho2 + mf**2 * m_inv).clamp_min(0)
            std = torch.full_like(u, math.sqrt(trans_var))
            std[..., :m] = prop_var.sqrt()
            u = prop_mean + std * particle_rng.randn(d, dtype=F64).to(dev).reshape(B, G, P, d)
            # log q - log proposal: the unobserved coordinates cancel (same Gaussian).
            obs_u = u[..., :m]
            log_q = -0.5 * (obs_u - trans_mean[..., :m]).square().sum(-1) / trans_var
            log_prop = -0.5 * (
                (obs_u - prop_mean[..., :m]).square() / prop_var.clamp_min(TINY)
            ).sum(-1)
            carry = log_q - log_prop - log_l
        log_w = log_W + log_lik(u, 0.0, floor=SIGMA_Y_FLOOR**2) + carry
        x = self.forward_op.V(pick_one(u, log_w, rng), **phys)
        return x.reshape(B * G, *self.shape).to(torch.float32)

    @torch.no_grad()
    def reference_samples(self, observation, num_samples, rng):
        """The reference's DDSMC (compat=reference; its PR #13), (rows, *shape) float64, from
        one stream per sample (``rng``'s rows).

        Its algorithm as written, in the reference's units: y' = U^T (y / unnorm_scale -
        A(shift)) on the thin basis, but the likelihood's noise is the configured sigma_noise
        itself (not divided by unnorm_scale); the particles start at V^T of image noise
        sigma_max e (so the directions outside the thin basis are dropped); the last step to
        sigma = 0 moves to the rho-posterior mean and weights the move as if it were the
        target's; the final weight is N(y'; S x, sigma_noise^2) without a floor (noise-free
        data, NaN in the reference, get a variance of 1e-300); a
        negative proposal variance (NaN in the reference) is clamped to 0; resampling as
        configured at every step, from ``rng``'s uniforms (multinomial by inverse CDF); the
        final particle by its weights. rho_k comes from ``rho_scheduler_config`` as here."""
        op, phys, sched = self.forward_op, observation.physics, self.annealing
        P, N = self.num_particles, sched.num_steps
        sp = reference_spectrum(op, observation, self.shape, num_samples)
        obs, n = sp.M[:, None] > 0, sp.n  # (R, 1, n)
        S, y = sp.S[:, None], sp.yt[:, None]
        sy2 = sp.sigma_noise.square()[:, None]  # (R, 1, 1), physical units as the reference
        sig = [float(v) for v in sched.sigma_steps]
        rho = self.rho
        eta = self.eta
        dev = sp.S.device

        def log_lik(x0, rho_k):
            # var = 0 (noise-free data, last step) is 0 / 0 in the reference; TINY here.
            var = (sy2 + rho_k**2 * S.square()).clamp_min(TINY)
            r2 = torch.where(obs, (S * x0 - y).square() / torch.where(obs, var, 1.0), 0.0)
            return -0.5 * r2.sum(-1)

        def uniforms():
            if self.resampling == "systematic":
                return rng.rand(1, dtype=F64).to(dev).expand(-1, P)
            return rng.rand(P, dtype=F64).to(dev)

        def pick(x, idx):
            return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))

        # sigma_max e is formed in float32, as in the reference (its draws are float32).
        e = rng.randn(P, sp.d, dtype=F64).to(dev)
        img = (e.float() * float(sched.sigma_max)).to(F64).reshape(-1, P, *self.shape)
        x = to_spectral(op, img, phys, n, len(self.shape))
        nd = len(self.shape)
        x_prev = x0_prev = log_l_prev = log_r = None  # set by the first step
        for k in range(N):
            img = to_image(op, x, phys, self.shape, sp.d)
            den = denoise(self.net, img, sig[k], self.shape, self.batch_size)
            x0 = to_spectral(op, den, phys, n, nd)
            log_l = log_lik(x0, rho[k])
            if k == 0:
                log_w = log_l
            else:
                # The target transition from step k - 1 to k, at the particles' new states.
                a, delta = sig[k] ** 2, sig[k - 1] ** 2 - sig[k] ** 2
                var_t = delta * a / (eta * a + delta)
                mean_t = eta / (eta + delta / a) * x_prev + 1 / (eta * a / delta + 1) * x0_prev
                log_q0 = -0.5 * ((x - mean_t).square() / var_t).sum(-1)
                log_w = log_l + log_q0 - log_l_prev - log_r
            log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
            idx = resample(log_w, uniforms(), self.resampling)
            x0_prev, log_l_prev, x_prev = pick(x0, idx), torch.gather(log_l, 1, idx), pick(x, idx)
            # Proposal: the decoupled transition conditioned on y' through x0 ~ N(x0_hat, rho^2).
            a = sig[k + 1] ** 2
            delta = sig[k] ** 2 - a
            mf = delta / (eta * a + delta)
            r2 = rho[k] ** 2
            den_ = S.square() * r2 + sy2
            m_inv = torch.where(obs, r2 * sy2 / den_, r2)
            mu = torch.where(obs, r2 * S / den_ * y + sy2 / den_ * x0_prev, x0_prev)
            mean = mf * mu + eta * a / (eta * a + delta) * x_prev
            last = k == N - 1
            diag = (
                torch.zeros_like(m_inv) if last else (a * mf - (mf * rho[k]) ** 2) + mf**2 * m_inv
            )
            x = mean + diag.clamp_min(0).sqrt() * rng.randn(P, n, dtype=F64).to(dev)
            if last:
                log_r = torch.zeros_like(log_l)
            else:
                log_r = -0.5 * ((x - mean).square() / diag.expand_as(x)).sum(-1)
        log_w = log_lik(x, 0.0) - log_l_prev - log_r
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
        idx = resample(log_w, rng.rand(1, dtype=F64).to(dev))
        return to_image(op, pick(x, idx)[:, 0], phys, self.shape, sp.d)
