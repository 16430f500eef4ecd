"""Synthetic HL60-nucleus-like permittivity phantoms for the inverse-scattering problem.

InverseBench's scattering data are CytoPacq simulations of HL60 cell nuclei: 1 to 6 roundish
nuclei per 128^2 image, smooth boundaries, textured chromatin, values in (0, 1) on a zero
background. ``hl60_phantom`` draws images with those features from a generator, defined in
continuous coordinates on [-1, 1]^2 and evaluated at pixel centres, so a phantom is the same
object at every resolution up to its texture:

* cell count K uniform in [min_cells, max_cells]; radii shrink with K so the cells fit;
* each nucleus is an ellipse (aspect 0.7-1, random orientation) whose radius is perturbed by
  Fourier modes 2-5 of the polar angle (lobed, never self-intersecting), with a smooth edge
  (a logistic profile a few percent of the radius wide);
* inside: a base level in [0.45, 0.8], a slight rim-to-centre change, chromatin texture
  (Gaussian noise low-pass filtered at a random scale) and 0-3 nucleoli (darker or brighter
  Gaussian blobs);
* cells are placed without large overlaps (rejection sampling); overlapping parts take the
  maximum; the result is clipped to [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.rng import DATA, derive_seed


def _smooth_noise(n: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """Zero-mean, unit-std Gaussian noise on an n x n grid low-passed at ``scale`` (in units of
    the [-1, 1] box): a Gaussian filter in Fourier space."""
    noise = torch.randn(n, n, generator=g, dtype=torch.float64)
    k = torch.fft.fftfreq(n, d=2.0 / n, dtype=torch.float64) * 2 * math.pi
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    out = torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-0.5 * k2 * scale**2)).real
    return (out - out.mean()) / out.std().clamp_min(1e-12)


def hl60_phantom(
    resolution: int, g: torch.Generator, min_cells: int = 1, max_cells: int = 6
) -> tuple[np.ndarray, int]:
    """One phantom (1, resolution, resolution) float32 in [0, 1] and its number of cells."""
    n = int(resolution)

    def u(lo=0.0, hi=1.0):
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    count = int(torch.randint(min_cells, max_cells + 1, (), generator=g))
    c = (torch.arange(n, dtype=torch.float64) + 0.5) * 2.0 / n - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    image = torch.zeros(n, n, dtype=torch.float64)
    placed: list[tuple[float, float, float]] = []
    r_hi = 0.62 / math.sqrt(count)  # total area stays a fraction of the box
    for _ in range(count):
        for _attempt in range(200):
            r = u(0.55, 1.0) * r_hi
            cx, cy = u(-0.9 + r, 0.9 - r), u(-0.9 + r, 0.9 - r)
            if all(math.hypot(cx - px, cy - py) > 0.85 * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        theta, aspect = u(0, math.pi), u(0.7, 1.0)
        dx, dy = xx - cx, yy - cy
        ex = dx * math.cos(theta) + dy * math.sin(theta)
        ey = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
        rho, phi = torch.sqrt(ex**2 + ey**2), torch.atan2(ey, ex)
        boundary = torch.ones_like(phi)
        for k in range(2, 6):  # lobes; amplitudes sum < 0.25, so r(phi) > 0
            boundary = boundary + u(0, 0.12 / (k - 1)) * torch.cos(k * phi + u(0, 2 * math.pi))
        edge = u(0.02, 0.06) * r
        inside = torch.sigmoid((r * boundary - rho) / edge)
        level = u(0.45, 0.8)
        radial = u(-0.15, 0.1) * (rho / (r * boundary)).clamp(max=1.0) ** 2
        texture = u(0.05, 0.15) * _smooth_noise(n, u(0.015, 0.05), g)
        cell = level + radial + texture
        for _ in range(int(torch.randint(0, 4, (), generator=g))):  # nucleoli
            a = u(0, 2 * math.pi)
            d = u(0, 0.6) * r
            s = u(0.08, 0.2) * r
            bx, by = cx + d * math.cos(a), cy + d * math.sin(a)
            blob = torch.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * s**2))
            cell = cell + u(-0.3, 0.25) * blob
        image = torch.maximum(image, inside * cell.clamp(0.0, 1.0))
    return image.clamp(0.0, 1.0).float().numpy()[None], count


def generate(
    num: int, resolution: int = 128, seed: int = 0, supersample: int = 1, **kwargs
) -> np.ndarray:
    """(num, 1, resolution, resolution) float32 phantoms; phantom i uses seed (seed, i).

    ``supersample`` s > 1 renders at s * resolution and averages s x s blocks (the pixel
    integrates the object, as a coarse acquisition would), so low resolutions are not aliased
    by texture finer than a pixel."""
    out = []
    for i in range(num):
        g = torch.Generator().manual_seed(derive_seed(seed, i, DATA))
        image = hl60_phantom(resolution * supersample, g, **kwargs)[0]
        if supersample > 1:
            image = F.avg_pool2d(torch.from_numpy(image)[None], supersample)[0].numpy()
        out.append(image)
    return np.stack(out)
