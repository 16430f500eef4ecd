"""Exact data steps of a linear operator with Gaussian noise, matrix-free (shared by DiffPIR's
linear mode and the ``exact_linear`` options of DAPS and PnP-DM): the proximal map
argmin_x ||y - A x||^2 + (rho/2) ||x - x0||^2 and exact draws from
N(c, r^2 I) exp(-||y - A z||^2 / (2 tau^2)) -- closed form per spectral coordinate when the operator
offers ``svd``, otherwise conjugate gradients with ``forward`` and ``adjoint``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from algo.base import singular_values
from inverse_problems.base import Observation, group_rows


@dataclass
class LinearData:
    """Per-item pieces of a linear operator's data step, computed once per call."""

    y_lin: torch.Tensor  # y - A(0), (B, ...)
    spectral: bool
    s: torch.Tensor | None = None  # singular values (B, m)
    uty: torch.Tensor | None = None  # U^T y_lin (B, m)
    aty: torch.Tensor | None = None  # A^T y_lin (B, C, H, W)
    offset: torch.Tensor | None = None  # A(0) (B, ...)


def _per_row(v, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A number or (rows,) tensor as (rows, 1, ..., 1) in ``like``'s dtype and device."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(-1).expand(rows)
    return v.reshape(rows, *[1] * (like.dim() - 1))


class LinearGaussian:
    """Exact data steps of a linear operator y = A x + A(0), without dense matrices: the closed
    form per spectral coordinate when the operator offers ``svd``, otherwise conjugate gradients
    on the normal equations with ``forward`` and ``adjoint``. Everything is per row (each row
    uses its item's physics); rows never depend on each other."""

    def __init__(self, forward_op, shape, cg_max_iter: int = 200, cg_tol: float = 1e-6):
        self.forward_op = forward_op
        self.shape = tuple(shape)
        self.cg_max_iter = int(cg_max_iter)
        self.cg_tol = float(cg_tol)
        self.spectral = "svd" in set(getattr(forward_op, "capabilities", ()))

    @staticmethod
    def requirements(forward_op) -> frozenset[str]:
        if "svd" in set(getattr(forward_op, "capabilities", ())):
            return frozenset({"linear", "svd"})
        return frozenset({"linear", "adjoint"})  # conjugate gradients need A and A^T

    def prepare(self, observation: Observation, dtype=torch.float32) -> LinearData:
        op, B, phys = self.forward_op, observation.batch, observation.physics
        zeros = torch.zeros(B, *self.shape, dtype=dtype, device=observation.y.device)
        offset = op.forward(zeros, **phys)
        y = observation.y if observation.y.is_complex() else observation.y.to(dtype)
        y_lin = y - offset.reshape(y.shape)
        if self.spectral:
            s = singular_values(op, observation).to(dtype)
            return LinearData(y_lin, True, s=s, uty=op.Ut(y_lin, **phys).to(dtype))
        aty = op.adjoint(y_lin, **phys).reshape(B, *self.shape).to(dtype)
        return LinearData(y_lin, False, aty=aty, offset=offset)

    def prox(self, x0, mu, observation: Observation, data: LinearData) -> torch.Tensor:
        """argmin_x ||y - A x||^2 + mu ||x - x0||^2 = (A^T A + mu I)^{-1}(A^T y + mu x0) per
        row; ``mu`` a number or (rows,), x0 (rows, C, H, W)."""
        B, R = observation.batch, x0.shape[0]
        mu = _per_row(mu, R, x0)
        if data.spectral:
            # A = U diag(S) V[:, :m]^T: coordinates past m are unobserved and keep their value.
            z = group_rows(self._vt(x0, observation), B)  # (B, n, d)
            s, mu_g = data.s.unsqueeze(1), group_rows(mu.reshape(R, 1), B)  # (B,1,m), (B,n,1)
            m = s.shape[-1]
            den = s.square() + mu_g
            obs = (s * data.uty.unsqueeze(1) + mu_g * z[..., :m]) / den.clamp_min(1e-300)
            obs = torch.where(den > 0, obs, z[..., :m])
            return self._v(torch.cat([obs, z[..., m:]], -1).flatten(0, 1), observation, x0)
        rhs = group_rows(mu * x0, B) + data.aty.unsqueeze(1)
        return self._cg(lambda v: self._normal(v, mu, observation, data), rhs.flatten(0, 1), x0)

    def sample(self, center, r, tau, observation: Observation, data: LinearData, rng):
        """An exact draw from N(center, r^2 I) exp(-||y - A z||^2 / (2 tau^2)) per row; ``r``
        and ``tau`` are numbers or per-row tensors. SVD: independent Gaussians per spectral
        coordinate. Otherwise perturb-and-solve: z = argmin ||y + tau e' - A z||^2
        + (tau/r)^2 ||z - center - r e||^2 is exactly distributed (linear-Gaussian)."""
        B, R = observation.batch, center.shape[0]
        r, tau = _per_row(r, R, center), _per_row(tau, R, center)
        if data.spectral:
            z = group_rows(self._vt(center, observation), B)  # (B, n, d)
            m = data.s.shape[-1]
            s = data.s.unsqueeze(1)
            r_g, t_g = group_rows(r.reshape(R, 1), B), group_rows(tau.reshape(R, 1), B)
            prec = s.square() / t_g.square() + 1 / r_g.square()
            mean = (s * data.uty.unsqueeze(1) / t_g.square() + z[..., :m] / r_g.square()) / prec
            eps = group_rows(rng.randn(z.shape[-1], dtype=center.dtype).to(center.device), B)
            obs = mean + eps[..., :m] / prec.sqrt()
            free = z[..., m:] + r_g * eps[..., m:]
            return self._v(torch.cat([obs, free], -1).flatten(0, 1), observation, center)
        y_rows = data.y_lin.repeat_interleave(R // B, 0)
        e_y = rng.randn_like(y_rows)
        if e_y.is_complex():  # torch's complex normal has E|e|^2 = 1; each part needs var 1
            e_y = e_y * math.sqrt(2.0)
        tau_y = tau.reshape(R, *[1] * (y_rows.dim() - 1)).to(e_y.real.dtype)
        ate = self.forward_op.adjoint(tau_y * e_y, **observation.physics).reshape(center.shape)
        mu = tau.square() / r.square()
        shifted = center + r * rng.randn_like(center)
        rhs = group_rows(mu * shifted + ate.to(center.dtype), B) + data.aty.unsqueeze(1)
        mu_rows = mu.reshape(R)
        normal = lambda v: self._normal(v, mu_rows, observation, data)  # noqa: E731
        return self._cg(normal, rhs.flatten(0, 1), shifted)

    def _vt(self, x, observation):
        return self.forward_op.Vt(x, **observation.physics).to(x.dtype)

    def _v(self, z, observation, like):
        return self.forward_op.V(z, **observation.physics).reshape(like.shape).to(like.dtype)

    def _normal(self, v, mu, observation, data):
        """(A^T A + mu I) v per row, with A v = forward(v) - A(0)."""
        B, phys = observation.batch, observation.physics
        av = group_rows(self.forward_op.forward(v, **phys), B) - data.offset.unsqueeze(1)
        atav = self.forward_op.adjoint(av.flatten(0, 1), **phys).reshape(v.shape).to(v.dtype)
        return atav + _per_row(mu, v.shape[0], v) * v

    def _cg(self, matvec, b, x):
        """Conjugate gradients per row from x; a row stops updating once its residual is below
        ``cg_tol`` relative to its right-hand side."""
        dot = lambda u, w: (u * w).flatten(1).sum(1)  # noqa: E731
        shape = (-1, *[1] * (b.dim() - 1))
        r = b - matvec(x)
        p = r.clone()
        rs = dot(r, r)
        floor = self.cg_tol**2 * dot(b, b)
        for _ in range(self.cg_max_iter):
            active = rs > floor
            if not bool(active.any()):
                break
            ap = matvec(p)
            pap = dot(p, ap)
            alpha = torch.where(active & (pap > 0), rs / pap.clamp_min(1e-300), 0.0)
            x = x + alpha.reshape(shape) * p
            r = r - alpha.reshape(shape) * ap
            rs_new = dot(r, r)
            beta = torch.where(active, rs_new / rs.clamp_min(1e-300), 0.0)
            p = r + beta.reshape(shape) * p
            rs = torch.where(active, rs_new, rs)
        return x
