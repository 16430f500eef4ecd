"""Cost of the pseudo-spectral Navier–Stokes solver (inverse_problems/ns_solver.py) at the
navier-stokes problem's setting: 128², Re=200, T=1, forcing −4cos(4y), float32, inputs
10 x (smooth random field with std 0.3), i.e. normalized std 0.3 times unnorm_scale 10.

    python benchmarks/bench_navier_stokes.py [--quick] [--repeats 3] [--device cpu] [--threads N]

Fixed Δt = 2e-3 (500 steps) and adaptive CFL steps, batch 1, 8 and 32 (``--quick``: 64², batch
1 and 4, T=0.25). Times are medians over repeats after one warm-up; "steps" is the mean number
of steps per element in adaptive mode. Shared machines are noisy: compare numbers from one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_time
from inverse_problems.ns_solver import NavierStokes2d, kolmogorov_forcing, smooth_random_field


def timed(fn, device, repeats):
    return median_time(fn, repeats, device)


def mean_adaptive_steps(solver, w0, f, T):
    """Steps each element takes alone (per-element Δt), averaged: solves one at a time."""
    counts = []
    for b in range(w0.shape[0]):
        n = 0
        orig = solver._step

        def counting(*args, _orig=orig):
            nonlocal n
            n += 1
            return _orig(*args)

        solver._step = counting
        solver.solve(w0[b : b + 1], f, T, check_every=1)
        solver._step = orig
        counts.append(n)
    return sum(counts) / len(counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64², batch 1 and 4, T=0.25")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    s, T, batches = (64, 0.25, [1, 4]) if args.quick else (128, 1.0, [1, 8, 32])
    dtype = torch.float32
    solver = NavierStokes2d(s, s, Re=200.0, device=device, dtype=dtype)
    f = kolmogorov_forcing(s, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    w_all = 10 * smooth_random_field(max(batches), s, std=0.3, generator=g, dtype=dtype)
    w_all = w_all.to(device)
    print(f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, {s}², T={T}")
    print(f"{'mode':>9} {'batch':>5} {'s/call':>8} {'s/sample':>9} {'steps':>6}")
    for adaptive in (False, True):
        for B in batches:
            w0 = w_all[:B]

            def run(w0=w0, adaptive=adaptive):
                return solver.solve(w0, f, T, delta_t=2e-3, adaptive=adaptive)

            t = timed(run, device, args.repeats)
            steps = mean_adaptive_steps(solver, w0, f, T) if adaptive else round(T / 2e-3)
            mode = "adaptive" if adaptive else "fixed"
            print(f"{mode:>9} {B:>5} {t:>8.3f} {t / B:>9.3f} {steps:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
