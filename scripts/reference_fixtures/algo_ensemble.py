"""Parity fixtures of the ensemble methods, EnKG and EKI, on the toy linear-Gaussian problem
(runs inside a reference checkout; imports nothing of this project; see
scripts/make_reference_fixtures.py).

The reference's own classes (algo.enkg.EnKG, algo.eki.EKI) run on the toy problem of ``_toy.py``
with its exact denoiser, reduced sizes (16 particles; 10 EnKG steps; 6 EKI updates), every torch
global draw recorded in order. Writes ``algo_enkg.npz`` (two settings: the reference's defaults
with factor 2, so that multi-step x0 grids occur, and a threshold / lr_min_ratio setting) and
``algo_eki.npz`` (a 4x4 Gaussian random field initial ensemble).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_args, save
from _toy import ToyNet, draws_as_arrays, make_toy, record_draws, toy_operator

ENKG_SETTINGS = {
    # The reference's config values (guidance 2, 2 updates, sigma 80 -> 0.002, threshold 0.1,
    # rho 7) at 10 steps, 16 particles in chunks of 8, and factor 2 (x0 grids of up to 5 steps).
    "default": dict(
        guidance_scale=2.0,
        num_steps=10,
        num_updates=2,
        sigma_max=80.0,
        sigma_min=0.002,
        num_samples=16,
        threshold=0.1,
        batch_size=8,
        rho=7,
        factor=2,
    ),
    # Guidance only for 3 < i < 9, and the reference's lr_min_ratio schedule.
    "schedule": dict(
        guidance_scale=1.0,
        num_steps=12,
        num_updates=1,
        sigma_max=40.0,
        sigma_min=0.002,
        num_samples=16,
        threshold=3.0,
        batch_size=16,
        lr_min_ratio=0.3,
        rho=5,
        factor=3,
    ),
}
EKI_SETTINGS = dict(guidance_scale=2.0, num_updates=6, num_samples=16, resolution=4)


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(1)
    from algo.eki import EKI
    from algo.enkg import EnKG

    toy = make_toy(seed=0, sigma_noise=0.1)
    net = ToyNet(toy["mu"], toy["cov"])
    op = toy_operator(toy)
    # (1, m) in float32, as the reference's data loaders give it (the parity tests use the same).
    y = torch.as_tensor(toy["y"])[None].float()

    arrays, meta = dict(toy), {"enkg": ENKG_SETTINGS, "eki": EKI_SETTINGS}
    for name, kw in ENKG_SETTINGS.items():
        algo = EnKG(net, op, **kw)
        with record_draws(seed=1) as draws:
            out = algo.inference(y, num_samples=1)
        arrays[f"enkg_{name}_out"] = out.numpy()
        arrays.update(draws_as_arrays(f"enkg_{name}", draws))
    save(args.out / "algo_enkg.npz", args.reference, meta, **arrays)

    arrays = dict(toy)
    algo = EKI(net, op, device=torch.device("cpu"), **EKI_SETTINGS)
    arrays["eki_sqrt_eig"] = algo.grf.sqrt_eig.numpy()
    with record_draws(seed=2) as draws:
        out = algo.inference(y, num_samples=1)
    arrays["eki_out"] = out.numpy()
    arrays.update(draws_as_arrays("eki", draws))
    save(args.out / "algo_eki.npz", args.reference, meta, **arrays)


if __name__ == "__main__":
    main()
