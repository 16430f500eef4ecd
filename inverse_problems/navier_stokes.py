"""2-D Navier–Stokes initial-vorticity recovery (InverseBench "ds2").

Unknown: the vorticity w0 on a periodic [0, 2π)^2 grid (normalized: w0 = unnorm_scale * x).
Forward map: solve w_t + u·∇w = (1/Re) Δw + f, f = -4 cos(4y), to ``forward_time`` with the
pseudo-spectral solver of ns_solver.py, then keep every ``downsample_factor``-th grid point.

The benchmark treats the solver as a black box, so by default ``forward`` runs without autograd and
the operator declares no ``gradient`` capability (derivative-free algorithms only, as in the
reference). ``differentiable=true`` lets autograd run through the solver, so gradient-based methods
can be compared on the same problem. ``advection`` picks the solver's form of the advection term:
"basdevant" (4 FFTs per evaluation) or the reference's "flux" (5), see ns_solver.py; by default
(None) the reference's form with ``compat='reference'`` (its numbers to float rounding: the two
forms differ by 6e-5 at 128^2) and Basdevant's with ``compat='corrected'``.
"""

from __future__ import annotations

import math

import torch

from inverse_problems.base import BaseOperator
from inverse_problems.ns_solver import NavierStokes2d, kolmogorov_forcing

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ForwardNavierStokes2d(BaseOperator):
    def __init__(
        self,
        resolution: int = 128,
        L: float = 2 * math.pi,
        forward_time: float = 1.0,
        Re: float = 200.0,
        downsample_factor: int = 2,
        dtype="float32",
        delta_t: float = 1e-2,
        adaptive: bool = True,
        cfl: float = 0.5,
        advection: str | None = None,
        differentiable: bool = False,
        sigma_noise: float = 0.0,
        unnorm_shift: float = 0.0,
        unnorm_scale: float = 10.0,
        device="cpu",
        compat: str = "corrected",
    ):
        self.differentiable = bool(differentiable)  # before the base class reads capabilities
        super().__init__(sigma_noise, unnorm_shift, unnorm_scale, device, compat=compat)
        if resolution % downsample_factor:
            raise ValueError(
                f"downsample_factor {downsample_factor} must divide the resolution {resolution}"
            )
        self.dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.resolution = int(resolution)
        self.forward_time = float(forward_time)
        self.downsample_factor = int(downsample_factor)
        self.delta_t = float(delta_t)
        self.adaptive = bool(adaptive)
        self.cfl = float(cfl)
        self.solver = NavierStokes2d(
            resolution,
            resolution,
            L,
            L,
            Re=Re,
            device=self.device,
            dtype=self.dtype,
            advection=advection or ("flux" if self.compat == "reference" else "basdevant"),
        )
        self.forcing = kolmogorov_forcing(resolution, L, device=self.device, dtype=self.dtype)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"gradient"}) if self.differentiable else frozenset()

    @classmethod
    def capabilities_for(cls, model_config) -> frozenset[str]:
        return frozenset({"gradient"}) if model_config.get("differentiable") else frozenset()

    def forward(self, x: torch.Tensor, **_physics) -> torch.Tensor:
        """(R, 1, N, N) normalized vorticity -> (R, 1, N/f, N/f) vorticity at ``forward_time``."""
        if x.shape[1:] != (1, self.resolution, self.resolution):
            raise ValueError(
                f"expected x of shape (R, 1, {self.resolution}, {self.resolution}), "
                f"got {tuple(x.shape)}"
            )
        w0 = self.unnormalize(x[:, 0]).to(self.device, self.dtype)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            w = self.solver.solve(
                w0,
                self.forcing,
                self.forward_time,
                self.delta_t,
                adaptive=self.adaptive,
                cfl=self.cfl,
            )
        f = self.downsample_factor
        return w[:, None, ::f, ::f].to(x.dtype)
