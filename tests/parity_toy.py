"""This project's side of the toy linear-Gaussian problem of the algorithm parity fixtures
(scripts/reference_fixtures/_toy.py builds the reference's side from the same arrays): the exact
Gaussian denoiser (``models.analytic.AnalyticPrior``), ``SVDLinear`` with the item's U, S, Vt,
and a ``ReplayRNG`` of the reference's recorded draws."""

from __future__ import annotations

import numpy as np
import torch

from inverse_problems.base import Observation
from inverse_problems.linear import SVDLinear
from models.analytic import AnalyticPrior
from utils.distributions import gaussian
from utils.rng import ReplayRNG

SHAPE = (1, 4, 4)


def toy_net(arrays, sigma_min=0.002, sigma_max=80.0) -> AnalyticPrior:
    prior = gaussian(torch.as_tensor(arrays["mu"]), torch.as_tensor(arrays["cov"]))
    return AnalyticPrior(prior, SHAPE, sigma_min=sigma_min, sigma_max=sigma_max)


def toy_operator(arrays, compat: str = "reference") -> SVDLinear:
    return SVDLinear(sigma_noise=float(arrays["sigma_noise"]), compat=compat)


def toy_observation(arrays) -> Observation:
    """One item: y (1, m) and its physics U (1, m, m), S (1, m), Vt (1, d, d)."""
    t = {k: torch.as_tensor(arrays[k], dtype=torch.float64)[None] for k in ("U", "S", "Vt")}
    return Observation(torch.as_tensor(arrays["y"], dtype=torch.float64)[None], t)


def recorded_draws(arrays, prefix: str) -> list[torch.Tensor]:
    keys = sorted(k for k in arrays if k.startswith(f"{prefix}_draw_"))
    return [torch.as_tensor(np.asarray(arrays[k])) for k in keys]


def replay(arrays, prefix: str, rows: int = 1) -> ReplayRNG:
    """The reference's draws recorded under ``prefix`` as an RNG for one item's ``rows``."""
    return ReplayRNG(recorded_draws(arrays, prefix), rows=rows)
