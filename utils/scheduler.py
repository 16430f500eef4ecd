"""Noise schedules sigma(t), scalings s(t) and timestep grids with InverseBench's semantics.

The forward process is x_t = s(t) * (x_0 + sigma(t) * eps) (Karras et al., 2022, Eq. 4). A
``Scheduler`` precomputes, on a grid t_0 > t_1 > ... > t_N, everything an Euler step of the
probability-flow ODE / reverse SDE needs:

    x_{i+1} = x_i * scaling_factor[i] + factor[i] * score * (1/2 for the ODE, 1 for the SDE)
              + sqrt(factor[i]) * eps (SDE only),

with scaling_factor = 1 - (ds/dt)/s * dt, factor = 2 s^2 sigma dsigma/dt * dt, dt = t_i - t_{i+1}.

Schedules: ``linear`` sigma = t, ``sqrt`` sigma = sqrt(t), ``vp`` sigma = sqrt(exp(beta_d t^2/2 +
beta_min t) - 1). Grids: ``log`` (geometric in sigma), ``poly-n`` (Karras rho = n in sigma),
``vp`` (t uniform from 1 to 1e-3). Scaling ``vp`` gives s = 1/sqrt(1 + sigma^2), otherwise 1.

Deviation from the reference: its ``log`` grid is written in t = sigma^2; we make it geometric in
sigma, which is the same grid for the ``sqrt`` schedule (its only documented use) and stays
meaningful for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BETA_D = 19.9
BETA_MIN = 0.1
VP_T_MIN = 1e-3


def sigma_of_t(t, schedule: str):
    t = np.asarray(t, dtype=np.float64)
    if schedule == "linear":
        return t
    if schedule == "sqrt":
        return np.sqrt(t)
    if schedule == "vp":
        return np.sqrt(np.expm1(0.5 * BETA_D * t**2 + BETA_MIN * t))
    raise ValueError(f"unknown schedule {schedule!r}; choose linear, sqrt or vp")


def dsigma_dt(t, schedule: str):
    t = np.asarray(t, dtype=np.float64)
    if schedule == "linear":
        return np.ones_like(t)
    if schedule == "sqrt":
        return 0.5 / np.sqrt(np.maximum(t, 1e-300))
    if schedule == "vp":
        sigma = sigma_of_t(t, "vp")
        g = 0.5 * BETA_D * t**2 + BETA_MIN * t
        return (BETA_D * t + BETA_MIN) * np.exp(g) / (2 * np.maximum(sigma, 1e-300))
    raise ValueError(f"unknown schedule {schedule!r}")


def t_of_sigma(sigma, schedule: str):
    sigma = np.asarray(sigma, dtype=np.float64)
    if schedule == "linear":
        return sigma
    if schedule == "sqrt":
        return sigma**2
    if schedule == "vp":
        # Root of beta_d t^2 / 2 + beta_min t = log(1 + sigma^2), in the cancellation-free form.
        log_term = np.log1p(sigma**2)
        return 2 * log_term / (np.sqrt(BETA_MIN**2 + 2 * BETA_D * log_term) + BETA_MIN)
    raise ValueError(f"unknown schedule {schedule!r}")


def scaling_of_t(t, scaling: str):
    t = np.asarray(t, dtype=np.float64)
    if scaling == "vp":
        return np.exp(-0.5 * (0.5 * BETA_D * t**2 + BETA_MIN * t))
    return np.ones_like(t)


def dlog_scaling_dt(t, scaling: str):
    """(ds/dt) / s."""
    t = np.asarray(t, dtype=np.float64)
    if scaling == "vp":
        return -0.5 * (BETA_D * t + BETA_MIN)
    return np.zeros_like(t)


def timestep_grid(num_steps: int, sigma_max: float, sigma_min: float, schedule: str, timestep: str):
    """Return ``num_steps`` times t_0 > ... > t_{N-1} (from sigma_max down to sigma_min)."""
    r = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    if timestep == "log":
        sig = sigma_max * (sigma_min / sigma_max) ** r
    elif timestep.startswith("poly-"):
        rho = float(timestep.split("-", 1)[1])
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sig = (hi + r * (lo - hi)) ** rho
    elif timestep == "vp":
        return 1.0 - r * (1.0 - VP_T_MIN)
    else:
        raise ValueError(f"unknown timestep grid {timestep!r}; choose log, poly-<n> or vp")
    return t_of_sigma(sig, schedule)


@dataclass
class Scheduler:
    """Precomputed grid for ``num_steps`` diffusion steps (reference: utils/scheduler.py).

    Arrays (float64 numpy, length ``num_steps + 1`` for sigma/time/scaling, ``num_steps`` for the
    per-step factors); the last grid point is ``sigma_final`` (defaults to ``sigma_min``).
    """

    num_steps: int = 10
    sigma_max: float = 100.0
    sigma_min: float = 0.01
    sigma_final: float | None = None
    schedule: str = "linear"
    timestep: str = "poly-7"
    scaling: str = "none"

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.sigma_final is None:
            self.sigma_final = self.sigma_min
        t = timestep_grid(
            self.num_steps, self.sigma_max, self.sigma_min, self.schedule, self.timestep
        )
        t_final = t_of_sigma(self.sigma_final, self.schedule)
        self.time_steps = np.append(t, t_final)
        self.sigma_steps = sigma_of_t(self.time_steps, self.schedule)
        self.scaling_steps = scaling_of_t(self.time_steps, self.scaling)
        # Derivatives at every grid point (for Heun corrections and custom steps).
        self.dsigma_steps = dsigma_dt(self.time_steps, self.schedule)
        self.dlog_scaling_steps = dlog_scaling_dt(self.time_steps, self.scaling)
        dt = self.time_steps[:-1] - self.time_steps[1:]
        self.dt_steps = dt
        ti = self.time_steps[:-1]
        s = self.scaling_steps[:-1]
        self.scaling_factor = 1.0 - dlog_scaling_dt(ti, self.scaling) * dt
        self.factor_steps = np.maximum(
            0.0, 2 * s**2 * self.sigma_steps[:-1] * dsigma_dt(ti, self.schedule) * dt
        )
        if self.timestep == "vp":
            # Initial noise scale: std of x_T = s(1) * sqrt(1 + sigma(1)^2) ~= 1.
            self.sigma_max = float(self.sigma_steps[0] * self.scaling_steps[0])


def partial_scheduler(scheduler: Scheduler, sigma: float) -> Scheduler:
    """Tail of ``scheduler`` starting at the last grid point with sigma >= ``sigma``."""
    keep = np.nonzero(scheduler.sigma_steps[:-1] < sigma)[0]
    start = max(int(keep[0]) - 1, 0) if len(keep) else scheduler.num_steps - 1
    out = object.__new__(Scheduler)
    out.__dict__.update(scheduler.__dict__)
    out.num_steps = scheduler.num_steps - start
    for name in (
        "time_steps",
        "sigma_steps",
        "scaling_steps",
        "dsigma_steps",
        "dlog_scaling_steps",
    ):
        setattr(out, name, getattr(scheduler, name)[start:])
    for name in ("scaling_factor", "factor_steps", "dt_steps"):
        setattr(out, name, getattr(scheduler, name)[start:])
    # As for a full grid: the std scale of the (scaled) starting state.
    out.sigma_max = float(out.sigma_steps[0] * out.scaling_steps[0])
    return out
