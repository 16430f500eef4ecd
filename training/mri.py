"""Multi-coil MRI data: synthetic knee-like scans and the reference's LMDB layout.

Layout (InverseBench's ``MultiCoilMRILMDBData``): a root with three LMDB environments ``mvue/``,
``s_maps/`` and ``kspace/``; key ``str(idx)``; values raw complex64 of shape (1, H, W) (the MVUE
image, normalized by its 99th-percentile magnitude) and (Nc, H, W) (coil maps, k-space in the
MVUE's units).

Synthetic scans (``synthetic_scan``): an axial-knee-like cross-section -- a lobed soft-tissue
outline with a bright subcutaneous fat band, textured muscle, one to three bones (dark cortical
ring around a bright textured marrow) and a few small structures (vessels, tendons) -- with a
smooth random phase; coil maps from the Biot-Savart-like birdcage model (coil c on a ring around
the object: magnitude 1 / distance, phase winding around the coil, normalized by the root sum
of squares, as sigpy's ``birdcage_maps``); k-space F(S_c x) plus complex Gaussian noise of
``noise`` times the RMS of the fully sampled k-space.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inverse_problems.multi_coil_mri import fft2c
from training.dataset import DATA_SOURCE, check_items, checked_ids, open_readonly
from training.phantoms import _smooth_noise
from utils.helper import select_ids
from utils.rng import DATA, derive_seed

ENVS = ("mvue", "s_maps", "kspace")


def birdcage_maps(coils: int, n: int, radius: float = 1.5) -> torch.Tensor:
    """(coils, n, n) complex128 maps of coils on a ring of ``radius`` (box half-widths)."""
    c = (torch.arange(n, dtype=torch.float64) - n / 2) / (n / 2)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    maps = []
    for k in range(coils):
        angle = 2 * math.pi * k / coils
        dx, dy = xx - radius * math.cos(angle), yy - radius * math.sin(angle)
        dist = torch.sqrt(dx**2 + dy**2)
        phase = torch.atan2(dx, -dy) + angle
        maps.append(torch.polar(1.0 / dist, phase))
    maps = torch.stack(maps)
    return maps / maps.abs().square().sum(0, keepdim=True).sqrt()


def knee_phantom(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, n) complex128 image: magnitude in [0, 1] with a smooth random phase."""

    def u(lo=0.0, hi=1.0):
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    c = (torch.arange(n, dtype=torch.float64) + 0.5) * 2.0 / n - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")

    def ellipse(cx, cy, a, b, theta, lobes=0.0):
        dx, dy = xx - cx, yy - cy
        ex = dx * math.cos(theta) + dy * math.sin(theta)
        ey = -dx * math.sin(theta) + dy * math.cos(theta)
        rho, phi = torch.sqrt((ex / a) ** 2 + (ey / b) ** 2), torch.atan2(ey / b, ex / a)
        edge = torch.ones_like(rho)
        for k in range(2, 5):
            edge = edge + lobes * u(0, 1 / k) * torch.cos(k * phi + u(0, 2 * math.pi))
        return torch.sigmoid((edge - rho) / 0.02)

    body_a, body_b, tilt = u(0.6, 0.85), u(0.5, 0.8), u(-0.4, 0.4)
    cx, cy = u(-0.08, 0.08), u(-0.08, 0.08)
    body = ellipse(cx, cy, body_a, body_b, tilt, lobes=0.3)
    inner = ellipse(cx, cy, body_a * u(0.8, 0.9), body_b * u(0.8, 0.9), tilt, lobes=0.3)
    fat = (body - inner).clamp(min=0)
    muscle = inner * (u(0.35, 0.5) + u(0.04, 0.1) * _smooth_noise(n, u(0.02, 0.06), g))
    image = u(0.8, 1.0) * fat + muscle
    for _ in range(int(torch.randint(1, 4, (), generator=g))):  # bones
        bx, by = cx + u(-0.35, 0.35) * body_a, cy + u(-0.3, 0.3) * body_b
        ra, rb, rt = u(0.12, 0.3), u(0.1, 0.25), u(0, math.pi)
        outer = ellipse(bx, by, ra, rb, rt)
        marrow = ellipse(bx, by, ra * 0.8, rb * 0.8, rt)
        texture = u(0.6, 0.85) + u(0.05, 0.12) * _smooth_noise(n, u(0.01, 0.03), g)
        image = image * (1 - outer) + outer * (0.05 + marrow * (texture - 0.05))
    for _ in range(int(torch.randint(2, 7, (), generator=g))):  # vessels, tendons
        sx, sy = cx + u(-0.6, 0.6) * body_a, cy + u(-0.6, 0.6) * body_b
        blob = ellipse(sx, sy, u(0.02, 0.06), u(0.02, 0.06), u(0, math.pi)) * inner
        image = image * (1 - blob) + blob * u(0.0, 1.0)
    image = image.clamp(0, 1)
    phase = math.pi * u(0.1, 0.5) * _smooth_noise(n, 0.5, g)
    return torch.polar(image, phase)


def espirit_maps(kspace: torch.Tensor, calib_width: int, crop: float = 0.95) -> torch.Tensor:
    """Coil maps estimated from (Nc, H, W) k-space by ESPIRiT (Uecker et al., MRM 2014) with
    SigPy's ``EspiritCalib`` on the central ``calib_width`` x ``calib_width`` calibration block;
    zero outside the object (eigenvalue ``crop``), phase relative to the first coil."""
    from sigpy.mri.app import EspiritCalib

    k = kspace.to(torch.complex128).numpy()
    est = EspiritCalib(k, calib_width=int(calib_width), crop=crop, show_pbar=False).run()
    est = torch.from_numpy(np.asarray(est)).to(torch.complex128)
    if not bool(est.abs().amax() > 0):
        raise ValueError(
            f"ESPIRiT found no coil maps with a {calib_width}-line calibration block (every "
            f"eigenvalue below crop={crop}); use a wider calib_width (at least 12 lines)"
        )
    return est


def synthetic_scan(
    n: int,
    coils: int,
    g: torch.Generator,
    noise: float = 0.01,
    maps: str = "true",
    calib_width: int | None = None,
) -> dict:
    """One scan: ``mvue`` (1, n, n), ``s_maps`` and ``kspace`` (coils, n, n), complex64, the image
    normalized by its 99th-percentile magnitude (the reference's MVUE normalization).

    ``maps='true'``: the maps that made the k-space, and the MVUE is the phantom itself.
    ``maps='espirit'``: as real pipelines, the maps are estimated from the noisy k-space by
    ESPIRiT (``calib_width`` defaults to n / 4 central lines, clamped to [12, 24]) and the MVUE
    is the coil combination of the fully sampled noisy k-space with those maps (phase relative
    to the first coil, zero outside the object); k-space is rescaled with the MVUE.
    """
    if maps not in ("true", "espirit"):
        raise ValueError(f"maps must be 'true' or 'espirit', got {maps!r}")
    image = knee_phantom(n, g)
    image = image / torch.quantile(image.abs().flatten(), 0.99)
    coil_maps = birdcage_maps(coils, n, radius=1.2 + 0.6 * float(torch.rand((), generator=g)))
    k = fft2c(coil_maps * image)
    rms = k.abs().square().mean().sqrt()
    shape = (coils, n, n)
    eps = torch.complex(
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    ) / math.sqrt(2)
    k = k + noise * rms * eps
    if maps == "espirit":
        coil_maps = espirit_maps(k, calib_width or min(24, max(12, n // 4)))
        image = mvue(k, coil_maps)
        scale = torch.quantile(image.abs().flatten(), 0.99)
        image, k = image / scale, k / scale
    as64 = lambda t: t.to(torch.complex64).numpy()  # noqa: E731
    return {"mvue": as64(image[None]), "s_maps": as64(coil_maps), "kspace": as64(k)}


def write_mri_lmdb(root, scans, envs=None) -> None:
    """Write scans (dicts of complex64 arrays) in the three-environment layout (or only the
    environments ``envs``)."""
    import lmdb

    root = Path(root)
    for name in envs or ENVS:
        arrays = [np.ascontiguousarray(s[name], dtype=np.complex64) for s in scans]
        (root / name).mkdir(parents=True, exist_ok=True)
        total = sum(a.nbytes for a in arrays)
        env = lmdb.open(str(root / name), map_size=2 * total + (1 << 20))
        with env.begin(write=True) as txn:
            for i, a in enumerate(arrays):
                txn.put(str(i).encode(), a.tobytes())
        env.close()


def generate(
    num: int, n: int = 64, coils: int = 8, seed: int = 0, noise: float = 0.01, maps: str = "true"
) -> list:
    """Scans 0 ... num-1; scan i uses seed (seed, i)."""
    return [
        synthetic_scan(
            n, coils, torch.Generator().manual_seed(derive_seed(seed, i, DATA)), noise, maps
        )
        for i in range(num)
    ]


class MultiCoilMRILMDBData(Dataset):
    """The reference's LMDB layout. Items: ``target`` (2, H, W) float32 (real and imaginary MVUE),
    ``maps`` (Nc, H, W) complex64, and ``kspace`` (Nc, H, W) complex64 unless
    ``simulated_kspace`` (then the operator simulates it from the target and the maps).
    ``mvue_only`` returns only the target (prior training)."""

    def __init__(
        self,
        root,
        image_size=(320, 320),
        mvue_only: bool = False,
        id_list=None,
        simulated_kspace: bool = False,
    ):
        self.root = Path(root)
        for name in ENVS[: 1 if mvue_only else 3]:
            if not (self.root / name / "data.mdb").is_file():
                raise FileNotFoundError(
                    f"no LMDB environment at {self.root / name} (expected "
                    f"{self.root / name / 'data.mdb'}; the layout is "
                    "<root>/{mvue,s_maps,kspace}). "
                    f"{DATA_SOURCE}. Point problem.data.root (or data.root) at it."
                )
        self.size = tuple(int(s) for s in image_size)
        self.mvue_only = bool(mvue_only)
        self.simulated_kspace = bool(simulated_kspace)
        self._envs: dict = {}
        with self._env("mvue").begin() as txn:
            n = txn.stat()["entries"]
        self.id_list = select_ids(id_list, n, self.root / "mvue" / "data.mdb")
        plane = 8 * self.size[0] * self.size[1]  # complex64 values of one image_size plane
        for name in ENVS[: 1 if mvue_only else 3]:
            if name == "kspace" and simulated_kspace:
                continue
            with self._env(name).begin() as txn:
                read = lambda i: txn.get(str(i).encode())  # noqa: E731
                ids = checked_ids(self.id_list)
                check_items(self.root / name / "data.mdb", ids, read, None, np.complex64)
                sizes = {len(read(i)) for i in ids}
            expected = {plane} if name == "mvue" else None
            if (expected and sizes != expected) or any(size % plane for size in sizes):
                raise ValueError(
                    f"{self.root / name / 'data.mdb'} items hold {sorted(sizes)} bytes, not "
                    f"{'' if expected else 'a multiple of '}{plane} (complex64 planes of "
                    f"image_size {list(self.size)}); set image_size to the data's"
                )

    def _env(self, name):
        if name not in self._envs:
            self._envs[name] = open_readonly(self.root / name)
        return self._envs[name]

    def __getstate__(self):
        return {**self.__dict__, "_envs": {}}

    def __len__(self) -> int:
        return len(self.id_list)

    def _read(self, name, index):
        with self._env(name).begin() as txn:
            buf = txn.get(str(self.id_list[index]).encode())
        return torch.from_numpy(
            np.frombuffer(buf, dtype=np.complex64).reshape(-1, *self.size).copy()
        )

    def __getitem__(self, index: int) -> dict:
        mvue = self._read("mvue", index)[0]
        target = torch.stack([mvue.real, mvue.imag]).float()
        if self.mvue_only:
            return {"target": target}
        item = {"target": target, "maps": self._read("s_maps", index)}
        if not self.simulated_kspace:
            item["kspace"] = self._read("kspace", index)
        return item


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """Central (h, w) window of the last two axes."""
    h, w = size
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def mvue(kspace: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Minimum-variance unbiased coil combination sum_c conj(S_c) F^H k_c / sqrt(sum_c |S_c|^2)
    (the reference's MVUE), (Nc, H, W) -> (H, W)."""
    from inverse_problems.multi_coil_mri import ifft2c

    norm = maps.abs().square().sum(0).sqrt()
    combined = (ifft2c(kspace) * maps.conj()).sum(0)
    return torch.where(norm > 0, combined / norm.clamp_min(1e-30), torch.zeros_like(combined))


class MultiCoilMRIData(Dataset):
    """fastMRI multi-coil HDF5 scans with ESPIRiT maps, the reference's ``MultiCoilMRIData``.

    ``root`` is the folder of ESPIRiT files (``*_sens_maps_espirit``, dataset ``s_maps``, shape
    (slices, Nc, H0, W0)); the k-space of each file is read from the same file name in the folder
    without the ``_sens_maps_espirit`` suffix (dataset ``kspace``, same shape). Items are
    (file, slice) pairs for slices in ``slice_range`` (the reference drops the first and last 5).
    Both are brought to ``image_size`` in image space: coil images F^H k and maps are centre-
    cropped (halving the 2x-oversampled readout FOV and cropping the phase-encode lines), then
    k-space is F of the cropped coil images. The target is the MVUE divided by its 99th-percentile
    magnitude; raw k-space is divided by the same number (``simulated_kspace=false``), or left to
    the operator to simulate from the target and maps (``true``). Sorted file names make the
    item order reproducible."""

    suffix = "_sens_maps_espirit"

    def __init__(
        self,
        root,
        image_size=(320, 320),
        mvue_only: bool = False,
        slice_range=(5, -5),
        id_list=None,
        simulated_kspace: bool = False,
    ):
        import h5py

        self.maps_root = Path(root)
        name = self.maps_root.name
        if not name.endswith(self.suffix):
            raise ValueError(
                f"root must be an ESPIRiT folder ending in {self.suffix!r}, got {root}"
            )
        self.kspace_root = self.maps_root.with_name(name[: -len(self.suffix)])
        files = sorted(self.maps_root.glob("*.h5"))
        if not files:
            raise FileNotFoundError(
                f"no ESPIRiT .h5 files in {self.maps_root} (k-space expected in "
                f"{self.kspace_root}). {DATA_SOURCE}."
            )
        self.size = tuple(int(s) for s in image_size)
        self.mvue_only, self.simulated_kspace = bool(mvue_only), bool(simulated_kspace)
        items = []
        for f in files:
            if not (self.kspace_root / f.name).is_file():
                raise FileNotFoundError(f"k-space file {self.kspace_root / f.name} is missing")
            with h5py.File(f, "r") as h:
                n = h["s_maps"].shape[0]
            items += [(f.name, s) for s in range(n)[slice(*slice_range)]]
        ids = select_ids(id_list, len(items), self.maps_root)
        self.items = [items[i] for i in ids]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import h5py

        from inverse_problems.multi_coil_mri import fft2c, ifft2c

        name, s = self.items[index]
        with h5py.File(self.kspace_root / name, "r") as h:
            k = torch.from_numpy(np.asarray(h["kspace"][s])).to(torch.complex128)
        with h5py.File(self.maps_root / name, "r") as h:
            maps = torch.from_numpy(np.asarray(h["s_maps"][s])).to(torch.complex128)
        k = fft2c(center_crop(ifft2c(k), self.size))
        maps = center_crop(maps, self.size)
        image = mvue(k, maps)
        scale = torch.quantile(image.abs().flatten().float(), 0.99).double()
        image, k = image / scale, k / scale
        target = torch.stack([image.real, image.imag]).float()
        if self.mvue_only:
            return {"target": target}
        item = {"target": target, "maps": maps.to(torch.complex64)}
        if not self.simulated_kspace:
            item["kspace"] = k.to(torch.complex64)
        return item
