"""Compressed-sensing multi-coil MRI: the SENSE forward model.

    y_c = M F (S_c x) + noise,   c = 1 ... Nc coils,

with x the complex image (two real channels, real and imaginary, as the reference), S_c the coil
sensitivity maps, F the centered orthonormal 2-D FFT (ifftshift, fft2 with norm="ortho",
fftshift) and M a binary undersampling mask of phase-encode lines. Measurements are real pairs
(..., Nc, H, W, 2) (``view_as_real``, as the reference); complex noise CN(0, sigma^2) is
sigma / sqrt(2) per part.

Per-item physics travels with the batch: ``maps`` (B, Nc, H, W) complex and ``mask`` (B, H, W) or
(B, 1, W) / (B, H, 1) boolean are entries of the ``Observation``, so items with different coils and
masks are solved in one call and the operator keeps no state (the reference stores the maps of the
current item on the operator, which limits it to one item at a time). A data item that carries no
mask gets the operator's own, drawn once from ``mask_seed``: the reference's lines (its
``np.random.seed(mask_seed); np.random.choice(...)``) from a local ``np.random.RandomState``, so
numpy's global RNG is left alone. ``compat='reference'`` also keeps the reference's equispaced
pattern, every R-th line outside the ACS block (more lines than floor(total / R));
``compat='corrected'`` keeps the budget (see ``line_mask``, docs/deviations.md).

Observations: with ``kspace`` in the data item (the "real" variants: raw scanner k-space with its
own acquisition noise) y = M kspace and no noise is added; without it ("sim" variants, or
``simulated_kspace=true`` data) y = M F(S x) + noise. The linear part is the whole forward map
(no offset), with an exact adjoint sum_c conj(S_c) F^H M y_c.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from inverse_problems.base import BaseOperator, Observation, group_rows
from utils.compat import check_compat


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT over the last two axes."""
    dims = (-2, -1)
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"), dim=dims
    )


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of ``fft2c`` (also its adjoint: the transform is unitary)."""
    dims = (-2, -1)
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"), dim=dims
    )


def acs_lines(total_lines: int, acceleration: float) -> int:
    """The reference's auto-calibration lines: 8 % of the lines for acceleration <= 6, else 4 %."""
    frac = 0.08 if 1 < acceleration <= 6 else 0.04
    return math.floor(frac * total_lines)


def line_mask(
    total_lines: int,
    acceleration: float,
    pattern: str = "random",
    generator: np.random.RandomState | torch.Generator | None = None,
    compat: str = "corrected",
) -> torch.Tensor:
    """(total_lines,) bool: the ACS block of ``acs_lines`` centred lines plus lines outside it.

    ``pattern='random'``: floor(total / R) lines in all, the others drawn without replacement by
    numpy's legacy ``RandomState.choice`` -- the reference's draw (it reseeds numpy's global RNG
    with ``mask_seed`` and calls ``np.random.choice``), here from the local ``generator``, so
    ``np.random.RandomState(mask_seed)`` gives the reference's lines and no global state is
    touched. A ``torch.Generator`` is accepted too: one 31-bit seed is drawn from it for a
    ``RandomState`` (several masks from one stream).

    ``pattern='equispaced'``: lines evenly spaced over those outside the ACS block, floor(total / R)
    in all (``compat='corrected'``); ``compat='reference'`` takes every int(R)-th of them as the
    reference does, which ignores the budget (99 lines instead of 80 at 320 lines and R = 4).
    """
    if pattern not in ("random", "equispaced"):
        raise ValueError(f"pattern must be 'random' or 'equispaced', got {pattern!r}")
    check_compat(compat, "line_mask compat")
    n = int(total_lines)
    num = math.floor(n / acceleration)
    acs = min(acs_lines(n, acceleration), num)
    mask = torch.zeros(n, dtype=torch.bool)
    start = (n - acs) // 2
    mask[start : start + acs] = True
    free = torch.nonzero(~mask).flatten()
    if pattern == "equispaced" and compat == "reference":
        mask[free[:: int(acceleration)]] = True
        return mask
    rest = num - acs
    if rest > 0:
        if pattern == "random":
            state = _random_state(generator)
            pick = torch.from_numpy(state.choice(free.numpy(), size=rest, replace=False))
        else:
            pick = free[torch.linspace(0, free.numel() - 1, rest).round().long()]
        mask[pick] = True
    return mask


def _random_state(generator) -> np.random.RandomState:
    if isinstance(generator, np.random.RandomState):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.RandomState(int(torch.randint(2**31, (1,), generator=generator)))
    raise ValueError(
        "a random line mask needs a generator: np.random.RandomState(mask_seed) (the reference's "
        f"draw) or a torch.Generator, got {type(generator).__name__}"
    )


class MultiCoilMRI(BaseOperator):
    physics_keys = ("maps", "mask")
    capabilities = frozenset({"gradient", "linear", "adjoint"})
    complex_measurements = True
    gradient = BaseOperator.adjoint_gradient  # 2 A^H (A x - y), no autograd graph

    def __init__(
        self,
        total_lines: int = 320,
        acceleration_ratio: float = 4,
        pattern: str = "random",
        orientation: str = "vertical",
        mask_fname: str | None = None,
        mask_seed: int = 0,
        sigma_noise: float = 0.0,
        device="cpu",
        compat: str = "corrected",
    ):
        super().__init__(sigma_noise, 0.0, 1.0, device, compat=compat)
        if orientation not in ("vertical", "horizontal"):
            raise ValueError(f"orientation must be 'vertical' or 'horizontal', got {orientation!r}")
        self.orientation = orientation
        self.acceleration = float(acceleration_ratio)
        if mask_fname:
            lines = torch.from_numpy(np.load(mask_fname)).reshape(-1).bool()
        else:
            state = np.random.RandomState(int(mask_seed))  # local: the global RNG stays as it was
            lines = line_mask(total_lines, self.acceleration, pattern, state, compat=self.compat)
        self.lines = lines.to(self.device)

    def default_mask(self) -> torch.Tensor:
        """(1, 1, W) for vertical lines (columns sampled), (1, H, 1) for horizontal."""
        return (
            self.lines[None, None, :]
            if self.orientation == "vertical"
            else self.lines[None, :, None]
        )

    # -- physics ---------------------------------------------------------------------------------
    @staticmethod
    def _complex_rows(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2:
            raise ValueError(
                f"x must have 2 channels (real, imaginary), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            x = x.to(torch.float64)
        return torch.complex(x[:, 0], x[:, 1])

    @staticmethod
    def _kspace_weight(mask: torch.Tensor, B: int, H: int, W: int, dtype) -> torch.Tensor | None:
        """(B, 1, 1, H, W) mask * s * (-1)^(kx + ky) / sqrt(H W) for even H and W, else None.

        For even sizes the centered orthonormal FFT is a modulated plain FFT,
        fft2c(z) = s D fft2(D z) / sqrt(H W) with D = (-1)^(i + j) and s = (-1)^(H/2 + W/2)
        (a shift by half the length is a sign flip in the other domain; same for the inverse),
        so the shifts' copies and the FFT's scaling pass fold into this one real weight.
        """
        if H % 2 or W % 2:
            return None
        sign = -1.0 if (H // 2 + W // 2) % 2 else 1.0
        d = MultiCoilMRI._checkerboard(H, W, dtype, mask.device)
        w = mask.reshape(B, *mask.shape[-2:]).to(dtype) * (d * (sign / math.sqrt(H * W)))
        return w.reshape(B, 1, 1, H, W)

    @staticmethod
    def _checkerboard(H: int, W: int, dtype, device) -> torch.Tensor:
        def signs(n):
            return 1 - 2 * (torch.arange(n, device=device, dtype=dtype) % 2)

        return signs(H)[:, None] * signs(W)[None, :]  # (-1)^(i + j)

    def forward(self, x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
        """(R, 2, H, W) images -> (R, Nc, H, W, 2) masked k-space, item-major rows, computed in
        x's precision (complex64 for float32 images, complex128 for float64)."""
        B = maps.shape[0]
        img = group_rows(self._complex_rows(x), B)  # (B, n, H, W)
        H, W = img.shape[-2:]
        w = self._kspace_weight(mask, B, H, W, img.real.dtype)
        if w is None:  # odd sizes: explicit shifts
            k = fft2c(img.unsqueeze(2) * maps.unsqueeze(1).to(img.dtype))  # (B, n, Nc, H, W)
            k = k * mask.reshape(B, 1, 1, *mask.shape[-2:]).to(k.real.dtype)
        else:
            img = img * self._checkerboard(H, W, img.real.dtype, img.device)
            k = torch.fft.fft2(img.unsqueeze(2) * maps.unsqueeze(1).to(img.dtype))
            k.mul_(w)
        return torch.view_as_real(k.flatten(0, 1))

    def adjoint(self, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
        """sum_c conj(S_c) F^H M y_c as (R, 2, H, W) in y's precision."""
        B = maps.shape[0]
        if not y.is_floating_point():
            y = y.to(torch.float64)
        k = group_rows(torch.view_as_complex(y.contiguous()), B)  # (B, n, Nc, H, W)
        H, W = k.shape[-2:]
        w = self._kspace_weight(mask, B, H, W, k.real.dtype)
        if w is None:
            k = k * mask.reshape(B, 1, 1, *mask.shape[-2:]).to(k.real.dtype)
            coil_images = ifft2c(k)  # a fresh tensor either way: multiplied in place below
        else:  # unnormalized inverse (norm="forward"): the weight carries 1 / sqrt(H W)
            coil_images = torch.fft.ifft2(k * w, norm="forward")
        coil_images.mul_(maps.conj().unsqueeze(1).to(k.dtype))
        img = coil_images.sum(2)  # (B, n, H, W)
        if w is not None:
            img = img * self._checkerboard(H, W, img.real.dtype, img.device)
        img = img.flatten(0, 1)
        return torch.stack([img.real, img.imag], dim=1)

    # -- observations ----------------------------------------------------------------------------
    def __call__(self, data, rng) -> Observation:
        """Measurements of a batch: masked raw k-space when the items carry ``kspace``, else
        simulated from ``target`` and the maps, plus noise."""
        maps = data["maps"].to(self.device)
        B = maps.shape[0]
        mask = data.get("mask")
        mask = self.default_mask().expand(B, -1, -1) if mask is None else mask.to(self.device)
        physics = {"maps": maps, "mask": mask.bool()}
        if "kspace" in data:
            k = data["kspace"].to(self.device)
            k = k * mask.reshape(B, 1, *mask.shape[-2:]).to(k.real.dtype)
            return Observation(torch.view_as_real(k.to(torch.complex128).contiguous()), physics)
        with torch.no_grad():
            y = self.forward(data["target"].to(self.device, torch.float64), **physics)
        std = self.noise_std(physics, B).to(y.device)
        if torch.any(std > 0):
            noise = rng.randn_like(y).to(y.device)
            y = y + std.reshape(-1, *[1] * (y.dim() - 1)).to(y.dtype) * noise
            y = y * mask.reshape(B, 1, *mask.shape[-2:], 1).to(y.dtype)  # noise only where sampled
        return Observation(y, physics)
