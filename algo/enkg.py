"""Ensemble Kalman diffusion guidance (EnKG): Zheng, Yao, Kovachki, Stuart, Yue, "Ensemble Kalman
Diffusion Guidance: A Derivative-free Method for Inverse Problems", arXiv:2409.20175 (2024).

An ensemble of J particles per test item follows the probability-flow ODE on an EDM (Karras,
rho = 7) grid sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, sigma_N = 0. At every grid
point i >= 1, before the ODE step, ``num_updates`` ensemble Kalman corrections are applied:

    x0_j   = ODE(x_j; sigma_i -> sigma_min)   in n_i = min(1 + (N - i) // factor, 20) Euler steps
    g_j    = G(x0_j)                           (forward model, a black box)
    e_j    = dL/dg (g_j) / 2 = g_j - y         (autograd through the misfit ``loss_m`` only)
    C_jk   = <e_j, g_k - mean(g)> / J          (J x J)
    x_j   <- x_j - eta_i * sum_k C_jk (x_k - mean(x)),   eta_i = guidance_scale * l_i / ||C||_F

The ensemble cross-covariance Cov(x, G(x0(x))) replaces the Jacobian of DPS's guidance, so neither
the forward model nor the network is differentiated. ``l_i`` decays linearly from 1 to
``lr_min_ratio`` over the guided steps (1 keeps the step size constant).

The forward model sees all J particles of all items of a batch in calls of at most ``batch_size``
rows; the network likewise. Memory is the ensemble itself plus one chunk.

Deviations from the reference code (algo/enkg.py of InverseBench):
  * per-item ensembles: a batch of items is solved at once, each item with its own ensemble and
    its own step size (the reference solves one item per call);
  * ``num_samples`` particles of the final ensemble are returned per item (the reference returns
    all J and ignores ``num_samples``); ``num_samples`` may not exceed J;
  * the reference's ``threshold`` argument is not used (its role is not documented there), and
    ``lr_min_ratio`` is read as the end point of a linear step-size decay.
"""

from __future__ import annotations

import itertools

import torch

from algo.base import Algo, chunked, chunked_items
from inverse_problems.base import group_rows


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """n + 1 noise levels from sigma_max to sigma_min, uniform in sigma^(1/rho) (EDM Eq. 5)."""
    if n == 0:
        return [sigma_max]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + k / n * (lo - hi)) ** rho for k in range(n + 1)]


def misfit_gradient(forward_op, g: torch.Tensor, observation) -> torch.Tensor:
    """d loss_m / d g per row, by autograd through the misfit alone: the operator is asked for no
    derivative (the reference calls its ``gradient_m``, the same computation)."""
    with torch.enable_grad():
        m = g.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward_op.loss_m(m, observation).sum(), m)
    return grad


def ode_euler(net, x: torch.Tensor, sigmas) -> torch.Tensor:
    """Probability-flow ODE, Euler steps along ``sigmas`` (EDM form: x' = (x - D(x)) / sigma)."""
    for sig, nxt in itertools.pairwise(sigmas):
        d = net(x, torch.as_tensor(sig, device=x.device))
        x = d + (nxt / sig) * (x - d)
    return x


class EnKG(Algo):
    requires = frozenset()

    def __init__(
        self,
        net,
        forward_op,
        guidance_scale: float = 2.0,
        num_steps: int = 80,
        num_updates: int = 2,
        sigma_max: float = 80.0,
        sigma_min: float = 0.002,
        num_particles: int = 2048,
        batch_size: int | None = 64,
        lr_min_ratio: float = 1.0,
        rho: float = 7.0,
        factor: int = 8,
        max_ode_steps: int = 20,
    ):
        super().__init__(net, forward_op)
        self.guidance_scale = float(guidance_scale)
        self.num_steps = int(num_steps)
        self.num_updates = int(num_updates)
        self.num_particles = int(num_particles)
        self.batch_size = int(batch_size) if batch_size else None
        self.lr_min_ratio = float(lr_min_ratio)
        self.rho = float(rho)
        self.factor = int(factor)
        self.max_ode_steps = int(max_ode_steps)
        self.sigma_min = float(sigma_min)
        # sigma_0 .. sigma_{N-1} on the Karras grid, then 0.
        self.sigmas = karras_sigmas(float(sigma_max), self.sigma_min, self.num_steps - 1, rho)
        self.sigmas.append(0.0)

    def ode_steps(self, i: int) -> int:
        return min(1 + (self.num_steps - i) // self.factor, self.max_ode_steps)

    def step_size(self, i: int) -> float:
        frac = (i - 1) / max(self.num_steps - 2, 1)
        return self.guidance_scale * (1.0 - (1.0 - self.lr_min_ratio) * frac)

    def kalman_update(self, x, observation, sigma: float, steps: int, eta: float):
        """One ensemble Kalman correction of the particles x (B * J rows) at noise level sigma."""
        B = observation.batch
        sub = karras_sigmas(sigma, self.sigma_min, steps, self.rho)
        x0 = chunked(lambda part: ode_euler(self.net, part, sub), x, self.batch_size)
        g = chunked_items(
            lambda part, obs: self.forward_op.forward(part, **obs.physics),
            x0,
            observation,
            self.batch_size,
        )
        err = 0.5 * misfit_gradient(self.forward_op, g, observation)
        # Real view of the measurements (complex ones count real and imaginary parts).
        gm = group_rows(torch.view_as_real(g) if g.is_complex() else g, B).flatten(2)
        em = group_rows(torch.view_as_real(err) if err.is_complex() else err, B).flatten(2)
        dg = gm - gm.mean(1, keepdim=True)
        J = gm.shape[1]
        C = torch.einsum("bjm,bkm->bjk", em.double(), dg.double()) / J  # (B, J, J)
        xr = group_rows(x, B).flatten(2).double()
        dx = torch.einsum("bjk,bkd->bjd", C, xr - xr.mean(1, keepdim=True))
        norm = torch.linalg.matrix_norm(C).clamp_min(1e-30).reshape(B, 1, 1)
        return (xr - eta * dx / norm).to(x.dtype).reshape(x.shape)

    def inference(self, observation, num_samples=1, rng=None):
        J = self.num_particles
        if num_samples > J:
            raise ValueError(
                f"EnKG returns particles of its ensemble: num_samples={num_samples} exceeds "
                f"num_particles={J}; raise algorithm.method.num_particles"
            )
        rng = self.sample_rng(observation, J, rng)
        x = rng.randn(*self.shape).to(observation.y.device) * self.sigmas[0]
        with torch.no_grad():
            for i in range(self.num_steps):
                sigma = self.sigmas[i]
                if i >= 1:
                    for _ in range(self.num_updates):
                        x = self.kalman_update(
                            x, observation, sigma, self.ode_steps(i), self.step_size(i)
                        )
                step = self.sigmas[i : i + 2]
                x = chunked(
                    lambda part, step=step: ode_euler(self.net, part, step), x, self.batch_size
                )
        keep = group_rows(x, observation.batch)[:, :num_samples]
        return keep.reshape(-1, *x.shape[1:])
