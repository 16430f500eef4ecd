"""FISTA with total-variation regularization (Beck and Teboulle, "Fast gradient-based algorithms
for constrained total variation image denoising and deblurring problems", IEEE TIP 2009): the
classical, prior-free baseline for linear problems such as inverse scattering.

Solves, per row and in normalized units,

    min_x ||A(x) - y||^2 + lam * TV(x)   subject to  lo <= x <= hi  (``bounds``; none if null)

with isotropic TV (forward differences, Neumann boundary) summed over channels. Each iteration
is a gradient step on the misfit with step 1 / Lip, Lip = 2 ||L||^2 (L the linear part of A,
estimated per item by ``power_iters`` power iterations on x -> (grad(x) - grad(0)) / 2 = L^T L x),
then the proximal map of (lam / Lip) TV plus the box, computed by FGP (the paper's fast gradient
projection on the dual, ``tv_iters`` iterations, warm-started from the previous outer iteration),
and FISTA's momentum (their Eq. 4.1-4.3; the monotone variant MFISTA is not used).

Needs only ``gradient`` of an operator declared ``linear``: no adjoint, no SVD. No network and no
randomness beyond the power iteration's start; every sample of an item is the same estimate.
"""

from __future__ import annotations

import math

import torch

from algo.base import Algo


def grad2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along H and W, zero in the last row / column (Neumann)."""
    dh = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    dh[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dw[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return dh, dw


def grad2d_adjoint(ph: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
    """The adjoint of ``grad2d`` (minus the divergence)."""
    out = torch.zeros_like(ph)
    out[..., :-1, :] -= ph[..., :-1, :]
    out[..., 1:, :] += ph[..., :-1, :]
    out[..., :, :-1] -= pw[..., :, :-1]
    out[..., :, 1:] += pw[..., :, :-1]
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per row."""
    dh, dw = grad2d(x)
    return (dh.square() + dw.square()).sqrt().flatten(1).sum(1)


def tv_prox(b, lam, iters, bounds=None, dual=None):
    """argmin_x 1/2 ||x - b||^2 + lam TV(x), lo <= x <= hi, by FGP on the dual (Beck and
    Teboulle 2009, Alg. FGP). ``lam`` (rows,) or a number; returns (x, dual) for warm starts."""
    lam = torch.as_tensor(lam, dtype=b.dtype, device=b.device).reshape(-1, *[1] * (b.dim() - 1))

    def primal(ph, pw):
        x = b - lam * grad2d_adjoint(ph, pw)
        return x if bounds is None else x.clamp(bounds[0], bounds[1])

    ph, pw = dual if dual is not None else (torch.zeros_like(b), torch.zeros_like(b))
    rh, rw, t = ph, pw, 1.0
    step = 1.0 / (8.0 * lam.clamp_min(torch.finfo(b.dtype).tiny))
    for _ in range(int(iters)):
        gh, gw = grad2d(primal(rh, rw))
        qh, qw = rh + step * gh, rw + step * gw
        norm = (qh.square() + qw.square()).sqrt().clamp_min(1.0)  # project onto |p| <= 1
        nh, nw = qh / norm, qw / norm
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        rh = nh + (t - 1) / t_next * (nh - ph)
        rw = nw + (t - 1) / t_next * (nw - pw)
        ph, pw, t = nh, nw, t_next
    return primal(ph, pw), (ph, pw)


class FISTATV(Algo):
    requires = frozenset({"linear", "gradient"})
    uses_prior = False  # runs without a checkpoint (main.py gives it the image shape only)

    def __init__(
        self,
        net,
        forward_op,
        lam: float = 1e-6,
        num_iters: int = 200,
        tv_iters: int = 20,
        power_iters: int = 30,
        bounds=(-1.0, 1.0),
    ):
        super().__init__(net, forward_op)
        self.lam = float(lam)
        self.num_iters = int(num_iters)
        self.tv_iters = int(tv_iters)
        self.power_iters = int(power_iters)
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))

    def lipschitz(self, observation, rng) -> torch.Tensor:
        """2 ||L||^2 per item (B,), by power iteration on L^T L (float64)."""
        op = self.forward_op
        zero = torch.zeros(observation.batch, *self.shape, dtype=torch.float64)
        zero = zero.to(observation.y.device)
        g0 = op.gradient(zero, observation)
        v = rng.randn(math.prod(self.shape)).to(zero).reshape(zero.shape)
        est = torch.ones(observation.batch, dtype=torch.float64, device=zero.device)
        for _ in range(self.power_iters):
            v = v / v.flatten(1).norm(dim=1).reshape(-1, *[1] * len(self.shape))
            w = (op.gradient(v, observation) - g0) / 2  # L^T L v
            est = (w * v).flatten(1).sum(1)
            v = w
        return 2 * est * 1.01  # a 1 % margin: the power iteration approaches from below

    def inference(self, observation, num_samples=1, rng=None):
        rng = self.sample_rng(observation, 1, rng)
        op = self.forward_op
        lip = self.lipschitz(observation, rng).reshape(-1, *[1] * len(self.shape))
        x = torch.zeros(observation.batch, *self.shape, dtype=torch.float64)
        x = x.to(observation.y.device)
        z, t, dual = x, 1.0, None
        for _ in range(self.num_iters):
            g = op.gradient(z, observation).to(torch.float64)
            x_next, dual = tv_prox(z - g / lip, self.lam / lip, self.tv_iters, self.bounds, dual)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = x_next + (t - 1) / t_next * (x_next - x)
            x, t = x_next, t_next
        return x.float().repeat_interleave(num_samples, 0)
