"""Parity fixtures of the SVD and SMC samplers (DDRM, DDNM+, FPS, MCG-Diff, DDSMC): the
reference's own algorithm classes run on the toy linear-Gaussian problem of ``_toy.py`` (16
unknowns, 10 measurements, exact Gaussian denoiser) with fewer steps and particles; every torch
draw they make is recorded in order, so the parity tests replay them into this project's
algorithms (tests/test_parity_algorithms_svd.py).

Resampling: ``torch.multinomial`` (also behind ``Tensor.multinomial`` and
``torch.distributions.Categorical.sample``) is recorded too, as one uniform per drawn index: the
midpoint of the drawn category's interval of the cumulative weights, in float64. Inverse-CDF
resampling with those uniforms picks the same categories (this project's samplers resample by
inverse CDF from uniforms).

The toy operator takes inverse scattering's layout: flat spectral vectors (MCG-Diff needs them)
from a thin basis, V^T's first 12 rows: 10 observed coordinates, 2 masked out by M = S > 1e-3
with singular value 1e-6 (as inverse scattering's near-zero ones; the reference divides by S
everywhere, and 0 / 0 would make every output NaN), and 4 directions the reference never touches
(the null space its thin V drops).

One file per case, ``tests/fixtures/reference/algo_<case>.npz``: the output ``x`` (what
``inference(y, num_samples=1)`` returns: all particles for FPS and MCG-Diff, one sample
otherwise), the draws ``<case>_draw_NNNN``, the observation ``y_obs`` and the toy's arrays; the
meta holds the algorithm, its constructor arguments (``config``) and ``unnorm_scale``.

Runs inside a reference checkout (scripts/make_reference_fixtures.py); imports nothing of this
project.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_args, save
from _toy import SHAPE, M, ToyNet, draws_as_arrays, make_toy, record_draws, toy_operator

VE = {"sigma_max": 100, "sigma_min": 0.01, "schedule": "sqrt", "timestep": "log"}
VP = {"schedule": "vp", "timestep": "vp", "scaling": "vp"}
EDM = {"sigma_max": 100, "sigma_min": 0.01, "schedule": "linear", "timestep": "poly-7"}
S_PAD = 1e-6
N_THIN = 12  # thin basis: 10 observed, 2 masked out (S_PAD), 4 directions never touched


class Cfg(dict):
    """A dict with attribute access (DDSMC reads ``smc_config.num_particles``)."""

    __getattr__ = dict.__getitem__


DDSMC = {
    "smc_config": {"resampling_method": "multinomial", "num_particles": 4},
    "eta": 0.5,
    "recon_fn": "tweedie",
    # 30 steps (the reference 200): with 10, rho 47 makes a proposal variance < 0 (NaN).
    "annealing_scheduler_config": {"num_steps": 30, "sigma_final": 0, **EDM},
    "rho_scheduler_config": {
        "num_steps": 30,
        "sigma_max": 47,
        "sigma_min": 0.01,
        "sigma_final": 0,
        "schedule": "linear",
        "timestep": "poly-7",
    },
}

# case -> (reference class path, constructor arguments, unnorm_scale). Reference defaults
# (configs/algorithm/<name>.yaml) with 10 steps and 4 particles; the scaled cases map x to
# physical units with inverse scattering's unnorm_scale 0.5 (the reference's units differ
# between algorithms).
CASES = {
    "ddrm": (
        "algo.ddrm.DDRM",
        {"scheduler_config": {"num_steps": 10, **VE}, "eta": 0.85, "eta_b": 1.0},
        1.0,
    ),
    "ddrm_scaled": (
        "algo.ddrm.DDRM",
        {"scheduler_config": {"num_steps": 10, **VE}, "eta": 0.85, "eta_b": 1.0},
        0.5,
    ),
    "ddnm": (
        "algo.ddnm.DDNM",
        {"scheduler_config": {"num_steps": 10, **VE}, "eta": 0.85, "L": 1},
        1.0,
    ),
    "ddnm_scaled": (
        "algo.ddnm.DDNM",
        {"scheduler_config": {"num_steps": 10, **VE}, "eta": 0.85, "L": 1},
        0.5,
    ),
    "fps": (
        "algo.fps.FPS",
        {
            "scheduler_config": {"num_steps": 10, "sigma_max": 100, "sigma_min": 0.01, **VP},
            "eta": 0.85,
            "num_particles": 4,
        },
        1.0,
    ),
    "mcgdiff": (
        "algo.mcgdiff.MCG_diff",
        {"scheduler_config": {"num_steps": 10, **EDM}, "num_particles": 4},
        1.0,
    ),
    "ddsmc": ("algo.ddsmc.DDSMC", DDSMC, 1.0),
    "ddsmc_scaled": ("algo.ddsmc.DDSMC", DDSMC, 0.5),
    "ddsmc_systematic": (
        "algo.ddsmc.DDSMC",
        {**DDSMC, "smc_config": {"resampling_method": "systematic", "num_particles": 4}},
        1.0,
    ),
}


def _midpoints(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(rows, n) uniforms in the middle of each drawn category's CDF interval."""
    p = probs.detach().to(torch.float64).reshape(-1, probs.shape[-1])
    cdf = p.cumsum(-1) / p.sum(-1, keepdim=True)
    lo = torch.cat([torch.zeros_like(cdf[:, :1]), cdf[:, :-1]], 1)
    i = idx.reshape(p.shape[0], -1)
    return 0.5 * (lo.gather(1, i) + cdf.gather(1, i))


@contextlib.contextmanager
def record_multinomial(draws: list):
    """Record every multinomial draw (torch.multinomial, Tensor.multinomial) as uniforms."""
    fn, method = torch.multinomial, torch.Tensor.multinomial

    def recorded(probs, num_samples, *args, **kwargs):
        out = fn(probs, num_samples, *args, **kwargs)
        draws.append(_midpoints(probs, out))
        return out

    torch.multinomial = recorded
    torch.Tensor.multinomial = recorded
    try:
        yield
    finally:
        torch.multinomial, torch.Tensor.multinomial = fn, method


def build(path: str, kwargs: dict, net, op):
    module, name = path.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    kwargs = {k: Cfg(v) if k == "smc_config" else v for k, v in kwargs.items()}
    return cls(net, op, **kwargs)


def toy(arrays, unnorm_scale: float):
    """The toy operator in inverse scattering's layout (flat spectral vectors, a thin basis of
    N_THIN < d columns, M = S > 1e-3), the extra coordinates with singular value S_PAD."""
    if "unnorm_scale" in inspect.signature(toy_operator).parameters:
        base = toy_operator(arrays, unnorm_scale=unnorm_scale)
    elif unnorm_scale != 1.0:
        raise RuntimeError("_toy.toy_operator has no unnorm_scale")
    else:
        base = toy_operator(arrays)
    U = torch.as_tensor(arrays["U"])
    Vt_ = torch.as_tensor(arrays["Vt"])[:N_THIN]
    S_ = torch.cat([torch.as_tensor(arrays["S"]), torch.full((N_THIN - M,), S_PAD).double()])

    class Thin(type(base)):
        @property
        def S(self):
            return S_

        @property
        def M(self):
            return (S_.abs() > 1e-3).double()

        def Vt(self, x):
            return x.reshape(x.shape[0], -1).to(torch.float64) @ Vt_.T

        def V(self, z):
            return (z.reshape(-1, N_THIN).to(torch.float64) @ Vt_).reshape(-1, *SHAPE)

        def Ut(self, y):
            z = y.reshape(y.shape[0], -1).to(torch.float64) @ U
            return torch.cat([z, z.new_zeros(z.shape[0], N_THIN - M)], 1)

    return Thin()


def main() -> None:
    args = parse_args(__doc__)
    arrays = make_toy(seed=0, sigma_noise=0.1)
    for seed, (case, (path, kwargs, unnorm_scale)) in enumerate(CASES.items()):
        net = ToyNet(arrays["mu"], arrays["cov"])
        op = toy(arrays, unnorm_scale)
        # The same x_true seen through the physical matrix: y = A (scale x) + sigma e.
        x = torch.as_tensor(arrays["x_true"])[None]
        obs = op.forward(x) + float(arrays["sigma_noise"]) * torch.as_tensor(arrays["noise"])
        algo = build(path, kwargs, net, op)
        with record_draws(100 + seed) as draws, record_multinomial(draws):
            out = algo.inference(obs, num_samples=1)
        out = out.detach()
        assert torch.isfinite(out).all(), case
        meta = {
            "algorithm": path,
            "config": kwargs,
            "unnorm_scale": unnorm_scale,
            "seed": 100 + seed,
            "s_pad": S_PAD,
        }
        save(
            args.out / f"algo_{case}.npz",
            args.reference,
            meta,
            x=out.numpy(),
            y_obs=obs.numpy(),
            **{k: v for k, v in arrays.items()},
            **draws_as_arrays(case, draws),
        )
        print(f"  {case}: {len(draws)} draws, |x| = {float(out.norm()):.4f}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
