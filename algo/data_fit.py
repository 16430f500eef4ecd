"""What the prior-free data-fit baselines (``adam``, ``lbfgs``) share: the start (the
Gaussian-smoothed truth, the FWI literature's oracle start, or a constant) and the optional box
``bounds`` applied after each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from algo.base import Algo


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of std ``sigma`` pixels over the last two axes, with edge
    replication (no darkening at the borders)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(*lead, h, w)


INITS = ("blurred_target", "constant")


def initial_model(init, shape, batch, target=None, sigma=20.0, value=0.0, device="cpu"):
    """The start of a data-fit baseline, (batch, *shape): the target smoothed with ``sigma``
    pixels, or the constant ``value`` (normalized units)."""
    if init == "blurred_target":
        if target is None:
            raise ValueError(
                "init='blurred_target' needs the target (main.py passes it to algorithms whose "
                "uses_target is true); use init='constant' without one"
            )
        return gaussian_smooth(target.to(device, torch.float32), float(sigma))
    if init == "constant":
        return torch.full((batch, *shape), float(value), device=device)
    raise ValueError(f"unknown init {init!r}; choose one of {INITS}")


class DataFitBaseline(Algo):
    """What the prior-free data-fit baselines (``adam``, ``lbfgs``) share: the start (smoothed
    truth or a constant) and the optional box ``bounds`` applied after each step."""

    requires = frozenset({"gradient"})
    uses_prior = False  # runs without a checkpoint (main.py gives it the image shape only)

    def __init__(self, net, forward_op, init, init_sigma, init_value, bounds):
        super().__init__(net, forward_op)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        self.init, self.init_sigma, self.init_value = init, float(init_sigma), float(init_value)
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))

    @property
    def uses_target(self) -> bool:
        """True when the start is the (smoothed) truth, which main.py must then pass in."""
        return self.init == "blurred_target"

    def start(self, observation, target=None) -> torch.Tensor:
        """The initial models, (B, *shape)."""
        return initial_model(
            self.init,
            self.shape,
            observation.batch,
            target,
            self.init_sigma,
            self.init_value,
            observation.y.device,
        )

    def project_(self, x: torch.Tensor) -> None:
        """Clamp x to ``bounds`` in place (no-op without bounds)."""
        if self.bounds is not None:
            with torch.no_grad():
                x.clamp_(*self.bounds)
