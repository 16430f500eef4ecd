"""Parity fixtures of the guidance and splitting algorithms (DPS, LGD, ΠGDM, RED-diff, DiffPIR,
DAPS, PnP-DM, DPG, SCG, DPS-GSG): the reference's own algorithm classes run on the toy
linear-Gaussian problem of ``_toy.py`` (16 unknowns, 10 measurements, exact Gaussian denoiser)
with reduced step counts; every torch draw they make is recorded in order, so the parity tests
replay them into this project's algorithms (tests/test_parity_algorithms_guidance.py).

One file per case, ``tests/fixtures/reference/algo_<case>.npz``: the output ``x`` (what
``inference(y, num_samples=1)`` returns), the draws ``<case>_draw_NNNN`` and the toy's arrays; the
meta holds the algorithm's name and its constructor arguments (``config``), which the test reads.

Runs inside a reference checkout (scripts/make_reference_fixtures.py); imports nothing of this
project.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_args, save
from _toy import ToyNet, draws_as_arrays, make_toy, record_draws, toy_operator

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


def main() -> None:
    args = parse_args(__doc__)
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
