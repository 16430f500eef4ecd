"""Generate Navier–Stokes vorticity data in the reference's LMDB format.

    python scripts/make_navier_stokes_data.py --out ../data/navier-stokes-test/Re200.0-t5.0 \
        --num 100 --resolution 128 --seed 1

Each sample: an initial vorticity drawn from a Gaussian random field on the periodic [0, 2π)^2
torus with spectrum ∝ (|k|^2 + tau^2)^(-alpha) (the form of the FNO / PINO initial conditions,
N(0, (-Δ + tau^2 I)^(-alpha)) up to scale; alpha = 2.5, tau = 7), scaled to pixel std
``--init-std``, then evolved for ``--time`` = 5 time units at Re = 200 under the Kolmogorov forcing
-4 cos(4y) (InverseBench's dataset card). Stored as key str(idx) -> float32 (1, H, W). Sample idx
uses seed (seed, idx), so any subset can be regenerated alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inverse_problems.ns_solver import NavierStokes2d, kolmogorov_forcing
from training.dataset import write_lmdb
from utils.distributions import matern_field
from utils.rng import DATA, derive_seed


def generate(
    num: int,
    resolution: int = 128,
    seed: int = 0,
    Re: float = 200.0,
    time: float = 5.0,
    alpha: float = 2.5,
    tau: float = 7.0,
    init_std: float = 3.0,
    delta_t: float = 1e-2,
    batch: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """(num, 1, resolution, resolution) float32 vorticity fields."""
    field = matern_field(resolution, alpha=alpha, tau=tau, variance=init_std**2)
    # The reference's flux form of the advection term: the shipped splits were made with it, so
    # the script reproduces them from their seeds (the default form differs at the 1e-4 level).
    solver = NavierStokes2d(
        resolution, resolution, Re=Re, device=device, dtype=torch.float64, advection="flux"
    )
    forcing = kolmogorov_forcing(resolution, 2 * math.pi, device=device, dtype=torch.float64)
    out = []
    for start in range(0, num, batch):
        idx = range(start, min(start + batch, num))
        w0 = (
            torch.cat(
                [
                    field.sample(1, torch.Generator().manual_seed(derive_seed(seed, i, DATA)))
                    for i in idx
                ]
            )
            .reshape(-1, resolution, resolution)
            .to(device)
        )
        w = solver.solve(w0, forcing, time, delta_t, adaptive=True)
        out.append(w.float().cpu().numpy()[:, None])
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--Re", type=float, default=200.0)
    p.add_argument("--time", type=float, default=5.0)
    p.add_argument("--init-std", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    data = generate(
        args.num,
        args.resolution,
        args.seed,
        args.Re,
        args.time,
        init_std=args.init_std,
        batch=args.batch,
        device=args.device,
    )
    write_lmdb(args.out, list(data))
    print(
        f"wrote {len(data)} fields to {args.out}: min {data.min():.2f}, max {data.max():.2f}, "
        f"std {data.std():.2f}"
    )


if __name__ == "__main__":
    main()
