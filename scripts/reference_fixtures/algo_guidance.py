"""Parity fixtures of the guidance and splitting algorithms (DPS, LGD, ΠGDM, RED-diff, DiffPIR,
DAPS, PnP-DM, DPG, SCG, DPS-GSG): the reference's own algorithm classes run on the toy
linear-Gaussian problem of ``_toy.py`` (16 unknowns, 10 measurements, exact Gaussian denoiser)
with reduced step counts; every torch draw they make is recorded in order, so the parity tests
replay them into this project's algorithms (tests/test_parity_algorithms_guidance.py).

One file per case, ``tests/fixtures/reference/algo_<case>.npz``: the output ``x`` (what
``inference(y, num_samples=1)`` returns), the draws ``<case>_draw_NNNN`` and the toy's arrays; the
meta holds the algorithm's name and its constructor arguments (``config``), which the test reads.

The image-sized family fixtures, ``algo_scatter_<case>.npz``, run DPS, ΠGDM (noisy), RED-diff and
DAPS on inverse scattering at inv-scatter-small's size (32^2, 20 transmitters, 60 receivers,
sigma 1e-4, unnorm shift 1 and scale 0.5; the reference's own ``InverseScatter`` with its SVD)
with an exact Gaussian prior instead of a network: a zero-mean stationary field whose covariance
spectrum (saved as ``spectrum``) is diagonal in the 2-D DFT, so both sides denoise exactly.

Runs inside a reference checkout (scripts/make_reference_fixtures.py); imports nothing of this
project.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_args
from _toy import ToyNet, make_toy, record_draws, save_scatter_case, save_toy_case, toy_operator

VP = {"schedule": "vp", "timestep": "vp", "scaling": "vp"}
VE = {"sigma_max": 100, "sigma_min": 0.01, "schedule": "sqrt", "timestep": "log"}
EDM = {"schedule": "linear", "timestep": "poly-7", "scaling": "none"}

# case -> (reference class path, constructor arguments, extra settings). Reference defaults
# (configs/algorithm/<name>.yaml) with fewer steps; some values are changed so that the toy
# shows the quirk under test (each noted).
CASES = {
    "dps": (
        "algo.dps.DPS",
        {"diffusion_scheduler_config": {"num_steps": 30, **VP}, "guidance_scale": 1.0, "sde": True},
        {},
    ),
    # guidance 0.5 instead of 3e-3 so that the sum-vs-mean normalisation shows on the toy.
    "lgd": (
        "algo.lgd.LGD",
        {
            "diffusion_scheduler_config": {"num_steps": 30, **VP},
            "guidance_scale": 0.5,
            "num_samples": 3,
            "batch_grad": True,
            "sde": True,
        },
        {},
    ),
    # (batch_grad False crashes in the reference: torch.sqrt of a numpy float.)
    "pigdm": (
        "algo.pigdm.PiGDM",
        {"scheduler_config": {"num_steps": 20, **VE}, "eta": 0.2, "noisy": True},
        {},
    ),
    # The operator maps normalised x to physical units with unnorm_scale 0.5 (inverse
    # scattering's value): the reference's noisy guidance mixes the two.
    "pigdm_scaled": (
        "algo.pigdm.PiGDM",
        {"scheduler_config": {"num_steps": 20, **VE}, "eta": 0.2, "noisy": True},
        {"unnorm_scale": 0.5},
    ),
    "pigdm_noiseless": (
        "algo.pigdm.PiGDM",
        {"scheduler_config": {"num_steps": 20, **VE}, "eta": 0.2, "noisy": False},
        {},
    ),
    "reddiff": (
        "algo.reddiff.REDDiff",
        {
            "num_steps": 30,
            "observation_weight": 1.0,
            "base_lambda": 0.25,
            "base_lr": 2e-2,
            "lambda_scheduling_type": "constant",
        },
        {},
    ),
    # xi 0.5 (reference 1) exercises the estimated-noise share of the re-noising too; sigma_n
    # 0.1, lamb 400 (reference 0.05, 8): the gradient step overshoots on this operator otherwise.
    "diffpir": (
        "algo.diffpir.DiffPIR",
        {
            "diffusion_scheduler_config": {"num_steps": 30, **VP},
            "sigma_n": 0.1,
            "lamb": 400.0,
            "xi": 0.5,
            "linear": False,
        },
        {},
    ),
    # tau 0.1 (reference 0.01): lr 1e-4 with tau 0.01 diverges on this operator (||A|| = 2).
    "daps": (
        "algo.daps.DAPS",
        {
            "annealing_scheduler_config": {
                "num_steps": 10,
                "sigma_max": 100,
                "sigma_min": 0.1,
                "sigma_final": 0,
                **EDM,
            },
            "diffusion_scheduler_config": {
                "num_steps": 3,
                "sigma_min": 0.01,
                "sigma_final": 0,
                "schedule": "linear",
                "timestep": "poly-7",
            },
            "lgvd_config": {"num_steps": 5, "lr": 1e-4, "tau": 0.1, "lr_min_ratio": 0.01},
        },
        {},
    ),
    # Faster decay (0.7) and a larger step (1e-4, tau 0.1) than the black-hole values, so that a
    # few sweeps visit several tails of the prior-step grid.
    "pnpdm": (
        "algo.pnpdm.PnPDM",
        {
            "annealing_scheduler_config": {
                "num_steps": 8,
                "sigma_max": 10,
                "sigma_min": 0.02,
                "rho": 0.7,
            },
            "diffusion_scheduler_config": {
                "num_steps": 20,
                "sigma_min": 1e-2,
                "sigma_final": 0,
                "schedule": "linear",
                "timestep": "poly-7",
            },
            "lgvd_config": {"num_steps": 5, "lr": 1e-4, "tau": 0.1},
        },
        {},
    ),
    # clamp_r 0.2 (reference 10): the reference ignores it, so the fixture shows where the
    # radius bound would act.
    "dpg": (
        "algo.dpg.DPG",
        {
            "diffusion_scheduler_config": {"num_steps": 20, **VP},
            "guidance_scale": 5.0,
            "num_mc_samples": 16,
            "batch_size": 8,
            "beta": 0.1,
            "clamp_r": 0.2,
            "rmin": 0.0,
            "sde": True,
        },
        {},
    ),
    "scg": (
        "algo.scg.SCG",
        {
            "diffusion_scheduler_config": {"num_steps": 20, **VP},
            "num_candidates": 8,
            "threshold": 0.25,
            "batch_size": 4,
        },
        {},
    ),
    # 20 queries in blocks of 4: the reference uses 2 blocks (8 directions), not 10.
    "dps_gsg": (
        "algo.dps_gsg.DPS_GSG",
        {
            "diffusion_scheduler_config": {"num_steps": 20, **EDM},
            "guidance_scale": 0.1,
            "num_queries": 20,
            "batch_size": 4,
            "mu": 0.01,
            "is_central": True,
            "sde": True,
        },
        {},
    ),
    "dps_gsg_forward": (
        "algo.dps_gsg.DPS_GSG",
        {
            "diffusion_scheduler_config": {"num_steps": 20, **EDM},
            "guidance_scale": 0.1,
            "num_queries": 10,
            "batch_size": 4,
            "mu": 0.01,
            "is_central": False,
            "sde": True,
        },
        {},
    ),
}


def build(path: str, kwargs: dict, net, op):
    module, name = path.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(net, op, **kwargs)


SCATTER = dict(Lx=0.18, Ly=0.18, Nx=32, Ny=32, wave=6, numRec=60, numTrans=20, sensorRadius=1.6)
SCATTER_UNITS = dict(sigma_noise=1e-4, unnorm_shift=1.0, unnorm_scale=0.5, device="cpu")

# Reduced steps of the reference defaults (DPS's guidance 1 instead of 10: the exact prior is
# much less smooth than the trained one, and 10 overshoots at 20 steps).
SCATTER_CASES = {
    "dps": (
        "algo.dps.DPS",
        {
            "diffusion_scheduler_config": {"num_steps": 20, **VP},
            "guidance_scale": 1.0,
            "sde": True,
        },
    ),
    "pigdm": (
        "algo.pigdm.PiGDM",
        {"scheduler_config": {"num_steps": 10, **VE}, "eta": 0.2, "noisy": True},
    ),
    "reddiff": (
        "algo.reddiff.REDDiff",
        {
            "num_steps": 20,
            "observation_weight": 1.0,
            "base_lambda": 0.25,
            "base_lr": 2e-2,
            "lambda_scheduling_type": "constant",
        },
    ),
    "daps": (
        "algo.daps.DAPS",
        {
            "annealing_scheduler_config": {
                "num_steps": 5,
                "sigma_max": 100,
                "sigma_min": 0.1,
                "sigma_final": 0,
                **EDM,
            },
            "diffusion_scheduler_config": {
                "num_steps": 2,
                "sigma_min": 0.01,
                "sigma_final": 0,
                "schedule": "linear",
                "timestep": "poly-7",
            },
            "lgvd_config": {"num_steps": 3, "lr": 1e-4, "tau": 0.01, "lr_min_ratio": 0.01},
        },
    ),
}


def field_spectrum(n: int = 32, amplitude: float = 0.3, k0: float = 3.0) -> np.ndarray:
    """Covariance eigenvalue per orthonormal DFT mode: a smooth field with std ~ amplitude."""
    k = np.fft.fftfreq(n) * n
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    spec = 1.0 / (1.0 + k2 / k0**2) ** 2
    return amplitude**2 * n * n * spec / spec.sum()


class FieldNet(torch.nn.Module):
    """Exact denoiser of the zero-mean stationary field with ``spectrum`` (float64 inside)."""

    def __init__(self, spectrum):
        super().__init__()
        self.spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        self.img_channels, self.img_resolution = 1, self.spectrum.shape[-1]
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1) ** 2
        gain = self.spectrum / (self.spectrum + s2)
        xf = torch.fft.fft2(x.to(torch.float64), norm="ortho")
        return torch.fft.ifft2(gain * xf, norm="ortho").real.to(x.dtype)


def scatter(args) -> None:
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
    clean = op.forward(x_true)  # (1, T, R) complex
    noise = torch.randn(clean.shape, dtype=clean.dtype, generator=g)  # CN(0, 1)
    y = clean + SCATTER_UNITS["sigma_noise"] * noise
    for seed, (case, (path, kwargs)) in enumerate(SCATTER_CASES.items()):
        algo = build(path, kwargs, FieldNet(spectrum), op)
        with record_draws(100 + seed) as draws:
            out = algo.inference(y, num_samples=1).detach()
        assert torch.isfinite(out).all(), case
        meta = {"algorithm": path, "config": kwargs, "seed": 100 + seed, **SCATTER, **SCATTER_UNITS}
        save_scatter_case(args, case, meta, out, y, x_true, spectrum, draws)


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)
    scatter(args)
    arrays = make_toy(seed=0, sigma_noise=0.1)
    y = torch.as_tensor(arrays["y"])[None]  # (1, m) float64
    for seed, (case, (path, kwargs, extra)) in enumerate(CASES.items()):
        net = ToyNet(arrays["mu"], arrays["cov"])
        unnorm_scale = float(extra.get("unnorm_scale", 1.0))
        op = toy_operator(arrays, unnorm_scale=unnorm_scale)
        obs = y
        if unnorm_scale != 1.0:
            # The same x_true seen through the physical matrix: y = A (scale x) + noise.
            x = torch.as_tensor(arrays["x_true"])[None]
            obs = op.forward(x) + float(arrays["sigma_noise"]) * torch.as_tensor(arrays["noise"])
        algo = build(path, kwargs, net, op)
        with record_draws(seed) as draws:
            out = algo.inference(obs, num_samples=1)
        out = out.detach()
        assert torch.isfinite(out).all(), case
        meta = {"algorithm": path, "config": kwargs, "unnorm_scale": unnorm_scale, "seed": seed}
        save_toy_case(args, case, meta, out, obs, arrays, draws)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
