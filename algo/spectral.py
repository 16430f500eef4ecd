"""The observation in SVD coordinates, and the denoiser seen in them (shared by the SVD samplers:
DDRM, DDNM+, FPS, MCG-Diff, DDSMC). With A = U diag(s) V^T and y_lin = y - A(0) (the operator's
affine offset removed), U^T y_lin = s * (V^T x) + U^T noise per coordinate.
"""

from __future__ import annotations

import math

import torch

from algo.base import chunked, singular_values

F64 = torch.float64


def spectral_observation(forward_op, observation, shape):
    """The observation in SVD coordinates: (y' = U^T (y - A 0), s, sigma_y, observed) with y', s,
    observed (B, m) and sigma_y (B,), all float64; ``observed`` is s > 0."""
    B = observation.batch
    phys = observation.physics
    dev = observation.y.device
    zero = torch.zeros(B, *shape, dtype=F64, device=dev)
    y_lin = observation.y.to(F64) - forward_op.forward(zero, **phys).reshape(observation.y.shape)
    y_spec = forward_op.Ut(y_lin, **phys).reshape(B, -1).to(F64)
    s = singular_values(forward_op, observation)
    sigma_y = forward_op.noise_std(phys, B).to(device=dev, dtype=F64).reshape(B)
    return y_spec, s, sigma_y, s > 0


def denoise_spectral(net, forward_op, physics, u, sigma, shape, batch_size):
    """V^T D(V u; sigma) for spectral states u (B, G, P, d) (float64 out, float32 network)."""
    rows = u.reshape(-1, u.shape[-1])
    x = forward_op.V(rows, **physics).reshape(-1, *shape).to(torch.float32)
    sig = torch.as_tensor(float(sigma), device=x.device)
    x0 = chunked(lambda part: net(part, sig), x, batch_size)
    return forward_op.Vt(x0.to(F64), **physics).reshape(u.shape)


def scaled_spectral_observation(forward_op, observation, shape, num_samples):
    """(ybar, noise, observed) per row (rows, m): ybar = U^T y_lin / s, the std sigma_y / s of its
    noise, and the mask s > 0. y_lin = y - A(0) removes the affine offset of the operator."""
    B, phys = observation.batch, observation.physics
    y = observation.y
    zero = torch.zeros(B, *shape, dtype=torch.float32, device=y.device)
    y_lin = (y - forward_op.forward(zero, **phys).reshape(y.shape)).reshape(B, -1)
    s = singular_values(forward_op, observation)  # (B, m)
    sigma_y = forward_op.noise_std(phys, B).to(device=s.device, dtype=torch.float64)
    u_y = forward_op.Ut(y_lin, **phys).to(torch.float64)  # (B, m)
    observed = s > 0
    safe = torch.where(observed, s, torch.ones_like(s))
    ybar = torch.where(observed, u_y / safe, torch.zeros_like(u_y))
    noise = torch.where(observed, sigma_y[:, None] / safe, torch.full_like(s, math.inf))
    return tuple(t.repeat_interleave(num_samples, 0) for t in (ybar, noise, observed))
