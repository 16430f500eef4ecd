"""Langevin dynamics and annealing grids shared by the decoupled-annealing samplers (DAPS,
PnP-DM): unadjusted Langevin on a Gaussian-regularized data misfit, the check that a run stayed
finite, and the probability-flow grids started at a given noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from inverse_problems.base import Observation
from utils.diffusion import sample
from utils.scheduler import Scheduler


@dataclass(frozen=True)
class Langevin:
    """Unadjusted Langevin dynamics on U(x) = ||y - A(x)||^2 / (2 tau^2) + ||x - c||^2 / (2 r^2):

        x <- x - lr grad U(x) + sqrt(2 lr) eps,   eps ~ N(0, I) from the per-row streams.

    ``tau: None`` means each item's noise level from the operator. The step size at progress
    ``ratio`` in [0, 1) is lr * (1 + ratio (lr_min_ratio - 1)).
    """

    num_steps: int
    lr: float
    tau: float | None = None
    lr_min_ratio: float = 1.0

    def step_size(self, ratio: float) -> float:
        return self.lr * (1.0 + ratio * (self.lr_min_ratio - 1.0))

    def tau_rows(self, forward_op, observation: Observation, x: torch.Tensor) -> torch.Tensor:
        """tau per row, shaped to broadcast against x."""
        B = observation.batch
        if self.tau is None:
            tau = forward_op.noise_std(observation.physics, B).to(torch.float64)
            if torch.any(tau <= 0):
                raise ValueError(
                    "lgvd tau=null takes the likelihood's std from the operator, but some items "
                    "have sigma_y = 0; give lgvd tau > 0"
                )
        else:
            if self.tau <= 0:
                raise ValueError(f"lgvd tau must be > 0, got {self.tau}")
            tau = torch.full((B,), self.tau, dtype=torch.float64)
        tau = tau.to(x.device).repeat_interleave(x.shape[0] // B)
        return tau.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))

    def run(self, forward_op, observation, x, center, r: float, tau, lr: float, rng):
        """``num_steps`` Langevin steps from x; raises if any row stops being finite."""
        for _ in range(self.num_steps):
            grad = forward_op.gradient(x, observation).to(x.dtype)
            drift = grad / (2 * tau.square()) + (x - center) / r**2
            x = x - lr * drift + math.sqrt(2 * lr) * rng.randn_like(x)
        return x


def check_finite(x: torch.Tensor, batch: int, who: str, where: str, hint: str) -> None:
    """Raise ``FloatingPointError`` naming the items whose rows are not finite."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        items = sorted({int(r) // (x.shape[0] // batch) for r in bad.nonzero().flatten()})
        raise FloatingPointError(
            f"{who}: Langevin diverged (non-finite values) in {int(bad.sum())} row(s) of "
            f"item(s) {items} (batch positions) {where}. {hint}"
        )


def check_sigma_grid(config: dict, who: str) -> None:
    if config.get("timestep", "poly-7") == "vp":
        raise ValueError(
            f"{who} builds diffusion grids that start at a given sigma; the 'vp' timestep grid "
            "ignores sigma_max. Use a sigma grid (timestep poly-<n> or log)."
        )


def grid_from(config: dict, sigma: float) -> Scheduler:
    """The grid of ``config`` started at ``sigma`` (one step when sigma <= its sigma_min)."""
    if sigma <= config.get("sigma_min", 0.01):
        return Scheduler(**{**config, "num_steps": 1, "sigma_max": sigma, "sigma_min": sigma})
    return Scheduler(**{**config, "sigma_max": sigma})


def integrate_from(net, x, sched: Scheduler, *, sde: bool, rng=None) -> torch.Tensor:
    """Run ``sched`` from the unscaled x at its first sigma; returns the unscaled end state."""
    s0, s1 = float(sched.scaling_steps[0]), float(sched.scaling_steps[-1])
    return sample(net, x * s0, sched, sde=sde, rng=rng) / s1
