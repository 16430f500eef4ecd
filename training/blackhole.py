"""Black-hole images: a generator of GRMHD-like morphologies and the reference's LMDB dataset.

Generated images (``crescent``) mimic what GRMHD simulations of M87* look like at EHT resolution:
a ring of random diameter (34-50 uas on a ``fov_uas`` = 160 uas field) and width, brightened on
one side (Doppler boosting: a crescent of random orientation and asymmetry), with a random
ellipticity, a darker interior of random depth, turbulent brightness fluctuations along the ring,
an optional faint extended component (a jet-base-like elongated Gaussian at a random angle and a
diffuse halo), all blurred by a random Gaussian kernel. Values are >= 0 with maximum 1 before
storage as float64 (1, n, n) under key ``str(idx)`` (the reference's layout); image idx uses
seed (seed, idx).

``BlackHole`` reads the reference's format (published GRMHD sets and generated ones alike):
resizes ``original_resolution`` to ``resolution`` with antialiasing, divides each image by its own
maximum and maps it to [-1, 1]; ``random_flip`` and ``zoom_in_out`` (scale in [0.833, 1.145])
are the reference's training augmentations, drawn from torch's per-worker generator (seeded by
``train.seed``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.dataset import DATA_SOURCE, check_items, checked_ids, open_readonly
from training.phantoms import _smooth_noise
from utils.helper import select_ids
from utils.rng import DATA, derive_seed


def crescent(n: int, g: torch.Generator, fov_uas: float = 160.0) -> torch.Tensor:
    """(n, n) float64 image, maximum 1."""

    def u(lo=0.0, hi=1.0):
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    c = (torch.arange(n, dtype=torch.float64) - n / 2 + 0.5) * fov_uas / n
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    # ring geometry: centre offset, ellipticity, orientation
    cx, cy = u(-6, 6), u(-6, 6)
    radius, width = u(17, 25), u(2.5, 7)
    ell, tilt = u(0.85, 1.15), u(0, math.pi)
    dx, dy = xx - cx, yy - cy
    ex = dx * math.cos(tilt) + dy * math.sin(tilt)
    ey = (-dx * math.sin(tilt) + dy * math.cos(tilt)) * ell
    r, phi = torch.sqrt(ex**2 + ey**2), torch.atan2(ey, ex)
    ring = torch.exp(-0.5 * ((r - radius) / width) ** 2)
    # Doppler-boosted side and turbulent fluctuations along the ring
    boost = 1 + u(0.2, 0.95) * torch.cos(phi - u(0, 2 * math.pi))
    turb = 1 + u(0.05, 0.35) * _smooth_noise(n, u(0.05, 0.15), g)
    img = ring * boost * turb.clamp_min(0.1)
    # interior: the shadow is not empty in GRMHD images
    img = img + u(0.0, 0.15) * torch.exp(-0.5 * (r / radius) ** 2) * (r < radius)
    if u() < 0.6:  # faint extended emission: jet base and halo
        angle, length = u(0, 2 * math.pi), u(20, 60)
        jx = dx * math.cos(angle) + dy * math.sin(angle)
        jy = -dx * math.sin(angle) + dy * math.cos(angle)
        jet = torch.exp(-0.5 * ((jx - length / 2) / length) ** 2 - 0.5 * (jy / u(4, 10)) ** 2)
        img = img + u(0.02, 0.12) * jet
        img = img + u(0.0, 0.05) * torch.exp(-0.5 * (r / u(40, 70)) ** 2)
    # blur: a Gaussian of random FWHM (in uas) in Fourier space
    fwhm = u(2, 10)
    s = fwhm / (2 * math.sqrt(2 * math.log(2))) / (fov_uas / n)  # pixels
    k = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi
    kernel = torch.exp(-0.5 * (k[:, None] ** 2 + k[None, :] ** 2) * s**2)
    img = torch.fft.ifft2(torch.fft.fft2(img) * kernel).real.clamp_min(0)
    return img / img.max()


def generate(num: int, n: int = 64, seed: int = 0, fov_uas: float = 160.0) -> np.ndarray:
    """(num, 1, n, n) float64 images; image i uses seed (seed, i)."""
    out = np.empty((num, 1, n, n), dtype=np.float64)
    for i in range(num):
        g = torch.Generator().manual_seed(derive_seed(seed, i, DATA))
        out[i, 0] = crescent(n, g, fov_uas).numpy()
    return out


class BlackHole(Dataset):
    """The reference's black-hole LMDB (float64 (1, orig, orig) per key), normalized per image."""

    def __init__(
        self,
        root,
        resolution: int = 64,
        original_resolution: int = 64,
        random_flip: bool = False,
        zoom_in_out: bool = False,
        id_list=None,
    ):
        self.root = Path(root)
        if not (self.root / "data.mdb").is_file():
            raise FileNotFoundError(
                f"no black-hole LMDB at {self.root} (expected {self.root / 'data.mdb'}). "
                f"{DATA_SOURCE}: scripts/make_blackhole_data.py. Point problem.data.root at it."
            )
        self.resolution, self.original = int(resolution), int(original_resolution)
        self.random_flip, self.zoom = bool(random_flip), bool(zoom_in_out)
        with open_readonly(self.root).begin() as txn:
            n = txn.stat()["entries"]
        # the reference ignores id_list when reading (its bug 10): here id i reads key str(i)
        self.id_list = select_ids(id_list, n, self.root / "data.mdb")
        with open_readonly(self.root).begin() as txn:
            check_items(
                self.root / "data.mdb",
                checked_ids(self.id_list),
                lambda i: txn.get(str(i).encode()),
                8 * self.original**2,  # float64 images of original_resolution^2
                np.float64,
                "set original_resolution to the stored images' size",
            )

    def __len__(self) -> int:
        return len(self.id_list)

    def __getitem__(self, index: int) -> dict:
        with open_readonly(self.root).begin() as txn:
            buf = txn.get(str(self.id_list[index]).encode())
        size = len(buf) // 8
        if size != self.original**2:
            raise ValueError(
                f"{self.root} item {self.id_list[index]} has {size} values, not "
                f"original_resolution^2 = {self.original**2}; set original_resolution"
            )
        x = torch.from_numpy(np.frombuffer(buf, dtype=np.float64).copy()).reshape(
            1, 1, *[self.original] * 2
        )
        if self.zoom:
            scale = float(torch.empty(()).uniform_(0.833, 1.145))
            theta = torch.tensor([[[1 / scale, 0, 0], [0, 1 / scale, 0]]], dtype=x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, align_corners=False)
        if self.original != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", antialias=True)
        if self.random_flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        if self.random_flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-2)
        x = x[0] / x.max().clamp_min(1e-30)
        return {"target": (2 * x - 1).float()}
