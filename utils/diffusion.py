"""A generic sampler of the probability-flow ODE / reverse SDE on a ``Scheduler`` grid.

Works with any denoiser ``net(x, sigma)`` (EDM convention, on the unscaled x/s). In the scaled
variable x = s(t) (x_0 + sigma(t) eps) (Karras et al., 2022, Eq. 4 and 6):

    dx = [ (s'/s) x - c * s^2 sigma sigma' * score ] dt + 1[SDE] * s sqrt(2 sigma sigma') dw,

with c = 1 for the ODE and 2 for the reverse SDE, and score = (D(x/s; sigma) - x/s) / (sigma^2 s).
An Euler step of this is exactly the reference's ``DiffusionSampler`` update. ``heun`` adds the
trapezoidal correction (Karras et al., 2022, Algorithm 1; for the SDE the same noise is used in
both stages, the stochastic Heun method), skipped on the last step when sigma reaches 0.
"""

from __future__ import annotations

import math

import torch

from utils.scheduler import Scheduler


def denoise_scaled(net, x: torch.Tensor, sched: Scheduler, i: int):
    """(x0_hat, score) at grid point i for the scaled state x."""
    s, sig = float(sched.scaling_steps[i]), float(sched.sigma_steps[i])
    x0 = net(x / s, torch.as_tensor(sig, device=x.device))
    score = (x0 - x / s) / (sig**2 * s)
    return x0, score


def drift(x: torch.Tensor, score: torch.Tensor, sched: Scheduler, i: int, sde: bool):
    """dx/dt at grid point i."""
    s, sig = sched.scaling_steps[i], sched.sigma_steps[i]
    g2 = 2.0 * s**2 * sig * sched.dsigma_steps[i]
    return float(sched.dlog_scaling_steps[i]) * x - (1.0 if sde else 0.5) * float(g2) * score


def euler_step(x, score, sched: Scheduler, i: int, sde: bool, noise=None):
    """x_{i+1} from x_i (reference formula; ``noise`` ~ N(0, I) is required for the SDE)."""
    x_next = (
        x * float(sched.scaling_factor[i])
        + (1.0 if sde else 0.5) * float(sched.factor_steps[i]) * score
    )
    if sde:
        x_next = x_next + math.sqrt(float(sched.factor_steps[i])) * noise
    return x_next


def sample(
    net,
    x: torch.Tensor,
    sched: Scheduler,
    *,
    solver: str = "euler",
    sde: bool = False,
    rng=None,
    callback=None,
) -> torch.Tensor:
    """Integrate from ``x`` at grid point 0 to the end of the grid; returns the final state.

    ``rng`` (a ``BatchRNG`` with one stream per row) is required for ``sde=True``.
    ``callback(i, x, x0_hat)`` is called after every step.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    if sde and rng is None:
        raise ValueError("the SDE sampler needs an rng (one stream per row)")
    for i in range(sched.num_steps):
        x0, score = denoise_scaled(net, x, sched, i)
        noise = rng.randn_like(x) if sde else None
        x_next = euler_step(x, score, sched, i, sde, noise)
        if solver == "heun" and sched.sigma_steps[i + 1] > 0:
            d_i = drift(x, score, sched, i, sde)
            _, score_next = denoise_scaled(net, x_next, sched, i + 1)
            d_next = drift(x_next, score_next, sched, i + 1, sde)
            x_next = x - float(sched.dt_steps[i]) * 0.5 * (d_i + d_next)
            if sde:
                x_next = x_next + math.sqrt(float(sched.factor_steps[i])) * noise
        x = x_next
        if callback is not None:
            callback(i, x, x0)
    return x
