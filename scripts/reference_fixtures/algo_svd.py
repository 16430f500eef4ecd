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

from _common import parse_args
from _toy import (
    SHAPE,
    M,
    ToyNet,
    make_toy,
    record_draws,
    save_scatter_case,
    save_toy_case,
    toy_operator,
)

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
def record_multinomial(draws: list, marks: list | None = None):
    """Record every multinomial draw (torch.multinomial, Tensor.multinomial) as uniforms; their
    positions in ``draws`` go to ``marks``."""
    fn, method = torch.multinomial, torch.Tensor.multinomial

    def recorded(probs, num_samples, *args, **kwargs):
        out = fn(probs, num_samples, *args, **kwargs)
        if marks is not None:
            marks.append(len(draws))
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


# Image-sized family fixtures: inverse scattering at inv-scatter-small's size with the exact
# stationary-field prior of algo_guidance.py (reduced steps and particles). DDSMC: 20 steps and
# rho 47 -> 1e-4 (the reference's floor 0.01 leaves rho above the next sigma late in a short grid:
# a negative proposal variance, NaN).
SCATTER_CASES = {
    "ddrm": CASES["ddrm"][:2],
    "ddnm": CASES["ddnm"][:2],
    "fps": CASES["fps"][:2],
    "mcgdiff": (
        "algo.mcgdiff.MCG_diff",
        {"scheduler_config": {"num_steps": 10, **EDM}, "num_particles": 2},
    ),
    "ddsmc": (
        "algo.ddsmc.DDSMC",
        {
            **DDSMC,
            "smc_config": {"resampling_method": "multinomial", "num_particles": 2},
            "annealing_scheduler_config": {"num_steps": 20, "sigma_final": 0, **EDM},
            "rho_scheduler_config": {
                **DDSMC["rho_scheduler_config"],
                "num_steps": 20,
                "sigma_min": 1e-4,
            },
        },
    ),
}


def scatter(args) -> None:
    """``algo_scatter_<case>.npz`` for the SVD family. The reference's spectral draws are in
    the coordinates of its own SVD, which this project's (computed differently, with other
    signs and another basis of the unmasked subspace) does not share: each spectral draw z is
    saved as the image-space vector V z (from the reference's V_t, stored in float32), and the
    test maps it into its own basis. The samplers treat the masked-out coordinates alike, so a
    rotation of that subspace changes nothing. Draws saved that way are listed in the meta."""
    import os
    import tempfile

    from algo_guidance import SCATTER, SCATTER_UNITS, FieldNet, field_spectrum

    from inverse_problems.inverse_scatter import InverseScatter  # the reference's

    spectrum = field_spectrum()
    g = torch.Generator().manual_seed(2024)
    white = torch.randn(1, 1, 32, 32, dtype=torch.float64, generator=g)
    x_true = torch.fft.ifft2(
        torch.as_tensor(spectrum).sqrt() * torch.fft.fft2(white, norm="ortho"), norm="ortho"
    ).real
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the reference caches its SVD under ./cache
        try:
            op = InverseScatter(**SCATTER, svd=True, **SCATTER_UNITS)
        finally:
            os.chdir(home)
    n = op.V_t.shape[0]
    clean = op.forward(x_true)  # (1, T, R) complex
    noise = torch.randn(clean.shape, dtype=clean.dtype, generator=g)  # CN(0, 1)
    y = clean + SCATTER_UNITS["sigma_noise"] * noise
    for seed, (case, (path, kwargs)) in enumerate(SCATTER_CASES.items()):
        algo = build(path, kwargs, FieldNet(spectrum), op)
        uniforms = []
        with record_draws(200 + seed) as draws, record_multinomial(draws, uniforms):
            out = algo.inference(y, num_samples=1).detach()
        assert torch.isfinite(out).all(), case
        spectral = [
            i
            for i, d in enumerate(draws)
            if i not in uniforms and d.shape[-1] == n and tuple(d.shape[-3:]) != (1, 32, 32)
        ]
        for i in spectral:  # float32 (4e-8 relative): the fixture stays small
            draws[i] = (draws[i].to(torch.float64) @ op.V_t).float()
        meta = {
            "algorithm": path,
            "config": kwargs,
            "seed": 200 + seed,
            "spectral_draws": spectral,
            **SCATTER,
            **SCATTER_UNITS,
        }
        save_scatter_case(args, case, meta, out, y, x_true, spectrum, draws)


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)
    scatter(args)
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
        save_toy_case(args, case, meta, out, obs, arrays, draws)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
