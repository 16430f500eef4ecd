"""Preconditioned denoisers D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al., 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", Table 1).

Four parametrisations with InverseBench's formulas and state-dict layout (the backbone lives under
``model.``, iDDPM adds the buffer ``u``), so the reference's checkpoints load unchanged:

- VPPrecond:    c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1), c_noise (M-1) t(sigma)
- VEPrecond:    c_skip 1, c_out sigma, c_in 1, c_noise log(sigma/2)
- iDDPMPrecond: c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1), c_noise M-1-argmin_j |u_j-sigma|
- EDMPrecond:   c_skip sd^2/(sigma^2+sd^2), c_out sigma sd/sqrt(sigma^2+sd^2),
                c_in 1/sqrt(sd^2+sigma^2), c_noise log(sigma)/4   (sd = sigma_data)

Every class satisfies the prior contract: ``net(x, sigma)`` with a scalar or per-row sigma,
``sigma_min``, ``sigma_max``, ``round_sigma`` and ``shape`` = (C, H, W).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

BACKBONES = ("DhariwalUNet", "SongUNet", "ADM")


def build_backbone(model_type: str, **kwargs) -> nn.Module:
    """The network behind a preconditioner; imported on demand so analytic priors stay light."""
    if model_type == "ADM":
        from models.ddpm import UNetModel

        return UNetModel(**kwargs)
    if model_type in ("DhariwalUNet", "SongUNet"):
        from models import unets

        return getattr(unets, model_type)(**kwargs)
    raise ValueError(f"unknown model_type {model_type!r}; choose one of {BACKBONES}")


class _Precond(nn.Module):
    """Shared plumbing: backbone construction, sigma/label handling, dtype policy."""

    out_scale = 1  # backbone outputs per image channel (iDDPM predicts mean and variance)

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__()
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.shape = (self.img_channels, self.img_resolution, self.img_resolution)
        self.model = build_backbone(
            model_type,
            img_resolution=self.img_resolution,
            in_channels=self.img_channels,
            out_channels=self.img_channels * self.out_scale,
            label_dim=self.label_dim,
            **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma of shape (B, 1, 1, 1)."""
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        sigma = sigma.reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model(
            (c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs
        )
        assert F_x.dtype == dtype, (F_x.dtype, dtype)
        return c_skip * x + c_out * F_x[:, : self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class VPPrecond(_Precond):
    """Variance preserving (Song et al., 2021): epsilon prediction on the VP SDE's sigma(t)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs,
    ):
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs
        )
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # Plain floats (computed without tensors, so construction also works on the meta device).
        self.sigma_min = math.sqrt(math.expm1(0.5 * beta_d * epsilon_t**2 + beta_min * epsilon_t))
        self.sigma_max = math.sqrt(math.expm1(0.5 * beta_d + beta_min))

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        log_term = torch.log1p(sigma**2)
        return (
            2 * log_term / ((self.beta_min**2 + 2 * self.beta_d * log_term).sqrt() + self.beta_min)
        )

    def coefficients(self, sigma):
        c_in = 1 / (sigma**2 + 1).sqrt()
        return 1.0, -sigma, c_in, (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance exploding (Song et al., 2021)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
        model_type: str = "SongUNet",
        **model_kwargs,
    ):
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs
        )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def coefficients(self, sigma):
        return 1.0, sigma, 1.0, (0.5 * sigma).log()


class iDDPMPrecond(_Precond):
    """Improved DDPM (Nichol & Dhariwal, 2021): a discrete cosine-schedule sigma grid u_j."""

    out_scale = 2

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs
        )
        self.C_1, self.C_2, self.M = C_1, C_2, M
        # u_M = 0; u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1}/abar_j, C_1) - 1).
        u = [0.0] * (M + 1)
        for j in range(M, 0, -1):
            ratio = max(self.alpha_bar(j - 1) / self.alpha_bar(j), C_1)
            u[j - 1] = math.sqrt((u[j] ** 2 + 1) / ratio - 1)
        self.register_buffer("u", torch.tensor(u, dtype=torch.float32))
        self.sigma_min = float(np.float32(u[M - 1]))  # the buffer's float32 values
        self.sigma_max = float(np.float32(u[0]))

    def alpha_bar(self, j) -> float:
        return math.sin(0.5 * math.pi * j / self.M / (self.C_2 + 1)) ** 2

    def _index(self, sigma: torch.Tensor) -> torch.Tensor:
        flat = sigma.to(self.u.device, torch.float32).reshape(-1, 1)
        return (flat - self.u.reshape(1, -1)).abs().argmin(1).reshape(sigma.shape)

    def round_sigma(self, sigma, return_index: bool = False):
        sigma = torch.as_tensor(sigma)
        index = self._index(sigma)
        out = index if return_index else self.u[index].to(sigma.dtype)
        return out.to(sigma.device)

    def coefficients(self, sigma):
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = self.M - 1 - self._index(sigma).to(torch.float32).to(sigma.device)
        return 1.0, -sigma, c_in, c_noise


class EDMPrecond(_Precond):
    """EDM (Karras et al., 2022): unit-variance network input and target at every sigma."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs
        )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma):
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


PRECONDITIONERS = {"vp": VPPrecond, "ve": VEPrecond, "iddpm": iDDPMPrecond, "edm": EDMPrecond}


def get_model(name: str, **kwargs) -> nn.Module:
    """Preconditioner by short name ('vp', 've', 'iddpm', 'edm')."""
    try:
        return PRECONDITIONERS[name.lower()](**kwargs)
    except KeyError:
        raise ValueError(
            f"unknown preconditioner {name!r}; choose {sorted(PRECONDITIONERS)}"
        ) from None
