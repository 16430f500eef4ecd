"""``compat=reference`` for the SVD samplers (DDRM, DDNM, FPS, MCG-Diff, DDSMC): the spectral
set-up of InverseBench (Zheng et al., ICLR 2025; the reference), in its own units.

The reference works in the coordinates of a *thin* SVD of its physical matrix A = U diag(S) V^T:
``n`` spectral coordinates (for inverse scattering min(2 T R, P), not P), a mask
``M = S > 1e-3`` of the coordinates it treats as observed, and the normalized observation
y' = y / unnorm_scale - A(unnorm_shift 1), so U^T y' = S (V^T x) + U^T e / unnorm_scale. The
directions outside the thin basis are never touched (they stay zero in every state); masked-out
coordinates inside it are sampled as unobserved. Its noise level is the operator's nominal
``sigma_noise`` (each algorithm divides it by unnorm_scale, or not, as the reference does).

This project's operators act on normalized x with the linear part L = unnorm_scale A
(inverse_problems/base.py), so the reference's quantities are ours divided by unnorm_scale:
S_ref = s / unnorm_scale and U^T y' = U^T (y - L 0) / unnorm_scale. ``RefSpectrum`` holds them
per row (item-major rows, as the samplers' states).

Differences that stay (documented in docs/deviations.md): coordinates beyond our numerical rank
(this project's SVD is truncated at ``svd_rtol``; the reference keeps near-zero singular values
and masks them with M) are treated as masked-out coordinates with S = 0, which changes nothing
where the reference multiplies them by M; a division 0 / 0 on an exactly zero singular value,
NaN in the reference, is 0 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from algo.base import chunked, singular_values

F64 = torch.float64
#: The reference's mask of significant singular values (physical units), S > 1e-3.
MASK_THRESHOLD = 1e-3


def reference_spectral_dim(forward_op, d: int) -> int:
    """The number of coordinates of the reference's thin SVD: the operator's
    ``reference_spectral_dim`` when it declares one, min(2 T R, d) for inverse scattering
    (its real-stacked matrix has 2 T R rows; ``torch.svd``'s thin V keeps min(2 T R, d)
    columns), else d (a full basis: the toy and pixel problems)."""
    declared = getattr(forward_op, "reference_spectral_dim", None)
    if declared is not None:
        return int(declared(d) if callable(declared) else declared)
    trans, rec = getattr(forward_op, "numTrans", None), getattr(forward_op, "numRec", None)
    if trans is not None and rec is not None:
        return min(2 * int(trans) * int(rec), d)
    return d


def reference_sigma_noise(forward_op, observation) -> torch.Tensor:
    """(B,) the noise level the reference's algorithms read: ``forward_op.sigma_noise`` as
    configured (for complex data the std of the complex noise, not of each real part), or a
    per-item ``sigma_noise`` physics entry (problems the reference does not have)."""
    B, dev = observation.batch, observation.y.device
    if "sigma_noise" in observation.physics:
        return observation.physics["sigma_noise"].reshape(B).to(dev, F64)
    return torch.full((B,), float(forward_op.sigma_noise), dtype=F64, device=dev)


@dataclass(frozen=True)
class RefSpectrum:
    """The reference's spectral quantities per row (R = items x rows per item), float64.

    * ``yt`` (R, n): U^T y' (zero beyond our rank);
    * ``S`` (R, n): singular values of the reference's physical A (zero beyond our rank);
    * ``M`` (R, n): the mask S > 1e-3, as 0/1 floats (the reference multiplies by it);
    * ``sigma_noise`` (R, 1): the configured noise level (see ``reference_sigma_noise``);
    * ``scale``: unnorm_scale; ``n``: the thin dimension; ``d``: the image dimension.
    """

    yt: torch.Tensor
    S: torch.Tensor
    M: torch.Tensor
    sigma_noise: torch.Tensor
    scale: float
    n: int
    d: int

    def over_s(self, v: torch.Tensor) -> torch.Tensor:
        """M v / S (the reference's ``v * (M / S)``), 0 where M = 0."""
        return torch.where(self.M > 0, v / torch.where(self.M > 0, self.S, 1.0), 0.0)


def reference_spectrum(forward_op, observation, shape, rows_per_item: int) -> RefSpectrum:
    """``RefSpectrum`` of an observation, each item's rows repeated ``rows_per_item`` times."""
    B, phys, dev = observation.batch, observation.physics, observation.y.device
    d = math.prod(shape)
    n = reference_spectral_dim(forward_op, d)
    scale = float(forward_op.unnorm_scale)
    zero = torch.zeros(B, *shape, dtype=torch.float32, device=dev)
    y = observation.y
    y_lin = (y - forward_op.forward(zero, **phys).reshape(y.shape).to(y.dtype)).reshape(B, -1)
    u_y = forward_op.Ut(y_lin, **phys).reshape(B, -1).to(F64) / scale
    s = singular_values(forward_op, observation) / scale
    m = s.shape[1]
    if m > n:
        raise ValueError(f"the operator has {m} singular values but a thin basis of {n}")
    S = torch.zeros(B, n, dtype=F64, device=dev)
    yt = torch.zeros(B, n, dtype=F64, device=dev)
    S[:, :m], yt[:, :m] = s, u_y
    M = (S > MASK_THRESHOLD).to(F64)
    sigma = reference_sigma_noise(forward_op, observation)[:, None]
    rows = [t.repeat_interleave(rows_per_item, 0) for t in (yt, S, M, sigma)]
    return RefSpectrum(*rows, scale=scale, n=n, d=d)


def to_image(forward_op, z: torch.Tensor, physics, shape, d: int) -> torch.Tensor:
    """V z for spectral rows z (..., n) (zero-padded to d): images (..., *shape), float64."""
    lead = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1]).to(F64)
    if flat.shape[1] < d:
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], d - flat.shape[1])], 1)
    return forward_op.V(flat, **physics).reshape(*lead, *shape).to(F64)


def to_spectral(forward_op, x: torch.Tensor, physics, n: int, ndim: int) -> torch.Tensor:
    """V^T x for images x (..., *shape) with ``ndim`` image dimensions, the first n coordinates
    (the reference's thin basis), float64."""
    lead = x.shape[: x.dim() - ndim]
    z = forward_op.Vt(x.reshape(-1, *x.shape[x.dim() - ndim :]).to(F64), **physics)
    return z.reshape(*lead, -1)[..., :n].to(F64)


def denoise(net, x: torch.Tensor, sigma: float, shape, batch_size: int | None = None):
    """D(x; sigma) for images x (..., *shape), float64 in and out (the preconditioned networks
    cast to float32 themselves; an exact analytic prior computes in float64, as the reference's
    spectral states are float64), in chunks of ``batch_size`` rows (None: one call)."""
    lead = x.shape[: x.dim() - len(shape)]
    rows = x.reshape(-1, *shape).to(F64)
    sig = torch.as_tensor(float(sigma), dtype=F64, device=rows.device)
    out = chunked(lambda part: net(part, sig), rows, batch_size)
    return out.reshape(*lead, *shape).to(F64)
