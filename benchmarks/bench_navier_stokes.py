"""Cost of the pseudo-spectral Navier–Stokes solver (inverse_problems/ns_solver.py) at the
navier-stokes problem's setting: 128², Re=200, T=1, forcing −4cos(4y), float32, inputs
10 x (smooth random field with std 0.3), i.e. normalized std 0.3 times unnorm_scale 10.

    python benchmarks/bench_navier_stokes.py [--quick] [--repeats 3] [--device cpu] [--threads N]

Fixed Δt = 2e-3 (500 steps) and adaptive CFL steps, batch 1, 8 and 32 (``--quick``: 64², batch
1 and 4, T=0.25). Both forms of the advection term are timed (``--advection``): ``basdevant``
(the default, 4 FFTs per evaluation) and the reference's ``flux`` (5), called in turn in each
repeat after one warm-up. Times are medians over repeats; the last column is the median of the
per-repeat time ratios; "steps" is the mean number of steps per element of the batch in adaptive
mode (elements leave the batch when they reach T). Shared machines are noisy: compare numbers
from one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved_times
from inverse_problems.ns_solver import NavierStokes2d, kolmogorov_forcing, smooth_random_field


def element_steps(solver, w0, f, T):
    """Steps per element of one adaptive batch solve (finished elements leave the batch)."""
    counts = []
    original = solver._step

    def counting(w_h, *args):
        counts.append(w_h.shape[0])
        return original(w_h, *args)

    solver._step = counting
    try:
        solver.solve(w0, f, T)
    finally:
        solver._step = original
    return sum(counts) / w0.shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64², batch 1 and 4, T=0.25")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--advection", default="basdevant,flux", help="forms to time, comma-separated"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    s, T, batches = (64, 0.25, [1, 4]) if args.quick else (128, 1.0, [1, 8, 32])
    dtype = torch.float32
    forms = args.advection.split(",")
    solvers = {
        a: NavierStokes2d(s, s, Re=200.0, device=device, dtype=dtype, advection=a) for a in forms
    }
    f = kolmogorov_forcing(s, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    w_all = 10 * smooth_random_field(max(batches), s, std=0.3, generator=g, dtype=dtype)
    w_all = w_all.to(device)
    print(f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, {s}², T={T}")
    header = "".join(f" {a + ' s/call':>15} {a + ' s/sample':>17}" for a in forms)
    ratio = f" {forms[-1] + '/' + forms[0]:>16}" if len(forms) > 1 else ""
    print(f"{'mode':>9} {'batch':>5}{header} {'steps':>6}{ratio}")
    for adaptive in (False, True):
        for B in batches:
            w0 = w_all[:B]
            fns = {
                a: (
                    lambda w0=w0, adaptive=adaptive, solver=solver: solver.solve(
                        w0, f, T, delta_t=2e-3, adaptive=adaptive
                    )
                )
                for a, solver in solvers.items()
            }
            times = interleaved_times(fns, args.repeats, device)
            steps = element_steps(solvers[forms[0]], w0, f, T) if adaptive else round(T / 2e-3)
            mode = "adaptive" if adaptive else "fixed"
            cols = "".join(f" {median(t):>15.3f} {median(t) / B:>17.3f}" for t in times.values())
            rounds = zip(times[forms[-1]], times[forms[0]])
            r = f" {median(a / b for a, b in rounds):>16.2f}" if len(forms) > 1 else ""
            print(f"{mode:>9} {B:>5}{cols} {steps:>6.0f}{r}", flush=True)


if __name__ == "__main__":
    main()
