"""Per-call cost of the exact denoisers and of DPS on the exact problems; prints tables.

    python benchmarks/bench_exact_priors.py [--repeats 20] [--device cpu|cuda]

Times are medians over repeats; compare versions with the ratios in one run, not absolute times
(shared machines are noisy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from algo.dps import DPS
from benchmarks.timing import median_time
from inverse_problems.linear import SVDLinear
from models.analytic import AnalyticPrior
from training.exact import LinearGMMProblems
from utils.distributions import grid_gmm, matern_field
from utils.results import collate
from utils.rng import BatchRNG


def timed(fn, repeats: int, device) -> float:
    return median_time(fn, repeats, device)


def denoiser_table(repeats: int, device) -> None:
    print("\nExact denoisers: ms per call (median), and per 1000 rows")
    print(f"{'prior':<22}{'rows':>7}{'forward ms':>12}{'fwd+VJP ms':>12}{'VJP/fwd':>9}")
    cases = [(f"GMM d={d}", AnalyticPrior(grid_gmm(d))) for d in (8, 80, 800)]
    cases.append(("GRF 32x32", AnalyticPrior(matern_field(32))))
    for name, net in cases:
        net = net.to(device)
        for rows in (100, 1000):
            x = torch.randn(rows, *net.shape, device=device)
            sigma = torch.tensor(1.0, device=device)

            def fwd(net=net, x=x, sigma=sigma):
                with torch.no_grad():
                    net(x, sigma)

            def vjp(net=net, x=x, sigma=sigma):
                xr = x.clone().requires_grad_(True)
                out = net(xr, sigma)
                torch.autograd.grad(out, xr, torch.ones_like(out))

            tf, tv = timed(fwd, repeats, device), timed(vjp, repeats, device)
            print(f"{name:<22}{rows:>7}{tf * 1e3:>12.3f}{tv * 1e3:>12.3f}{tv / tf:>9.2f}")


def dps_batch_table(repeats: int, device) -> None:
    print("\nDPS on gmm (d=8, d_y=4, 100 VP steps, 200 samples/item): time per item vs batch")
    gmm = grid_gmm(8)
    net, op = AnalyticPrior(gmm).to(device), SVDLinear(device=device)
    data = LinearGMMProblems(gmm, dim_y=4, num_items=8)
    algo = DPS(
        net,
        op,
        {"num_steps": 100, "schedule": "vp", "timestep": "vp", "scaling": "vp"},
        guidance_scale=1.0,
    )
    base = None
    print(f"{'items/batch':>12}{'s/item':>10}{'ratio to 1':>12}")
    for b in (1, 2, 4, 8):
        batch = {k: v.to(device) for k, v in collate([data[i] for i in range(b)]).items()}
        obs = op(batch, BatchRNG.for_items(0, range(b), 0, device))

        def solve(b=b, obs=obs):
            algo.inference(obs, 200, BatchRNG.for_items(0, range(b), 1, device))

        per_item = timed(solve, max(1, repeats // 5), device) / b
        base = base or per_item
        print(f"{b:>12}{per_item:>10.3f}{per_item / base:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    denoiser_table(args.repeats, device)
    dps_batch_table(args.repeats, device)


if __name__ == "__main__":
    main()
