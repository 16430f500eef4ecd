"""Cost of the Born inverse-scattering operator (inverse_problems/inverse_scatter.py).

    python benchmarks/bench_inverse_scatter.py                  # 128^2, 360 receivers, no SVD
    python benchmarks/bench_inverse_scatter.py --svd            # + the full-size SVD set-up
    python benchmarks/bench_inverse_scatter.py --size 64 --receivers 60 --svd

Prints: construction time (Green's functions); forward and forward+gradient seconds per call and
per item at batch 1 and 16; and their ratio to the floor, a bare complex matrix product of the
same size ((B T x P) @ (P x R), the Born map's one product; the gradient is two). With --svd, the
SVD set-up (computed in a child process so its peak resident memory is measured alone) and the
size of the cached factors. Medians over repeats after a warm-up; compare ratios, not seconds,
on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_time
from inverse_problems.base import Observation
from inverse_problems.inverse_scatter import InverseScatter

CPU = torch.device("cpu")


def svd_child(size: int, receivers: int, transmitters: int, cache: str) -> None:
    """Runs in a child process: computes the SVD, prints seconds, peak RSS and file size."""
    start = time.perf_counter()
    op = InverseScatter(
        Nx=size, Ny=size, numRec=receivers, numTrans=transmitters, cache_dir=cache, svd=True
    )
    op.spectral()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path = op.svd_path()
    rank = int(op.singular_values().shape[1])
    print(
        json.dumps({"seconds": seconds, "peak": peak, "bytes": path.stat().st_size, "rank": rank})
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--receivers", type=int, default=360)
    p.add_argument("--transmitters", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--svd", action="store_true", help="also time the SVD set-up (long at 128^2)")
    p.add_argument("--svd-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.svd_child:
        svd_child(args.size, args.receivers, args.transmitters, args.cache)
        return

    n, T, R = args.size, args.transmitters, args.receivers
    t0 = time.perf_counter()
    op = InverseScatter(Nx=n, Ny=n, numRec=R, numTrans=T, svd=False, dtype=args.dtype)
    build = time.perf_counter() - t0
    print(
        f"## Born operator {n}x{n}, {T} transmitters x {R} receivers, {args.dtype}, "
        f"{torch.get_num_threads()} threads\n\nconstruction (Green's functions): {build:.2f} s\n"
    )
    g = torch.Generator().manual_seed(0)
    rows = []
    for B in args.batches:
        x = torch.rand(B, 1, n, n, generator=g) * 2 - 1
        obs = Observation(op.forward(torch.rand(1, 1, n, n, generator=g) * 2 - 1))
        left = torch.randn(B * T, n * n, dtype=op.cdtype, generator=g)
        floor = median_time(lambda left=left: left @ op.green, args.repeats, CPU)
        fwd = median_time(lambda x=x: op.forward(x), args.repeats, CPU)
        grad = median_time(lambda x=x, o=obs: op.gradient(x, o), args.repeats, CPU)
        rows.append((B, floor, fwd, grad))
    print(
        "| batch | floor (1 product) ms | forward ms | per item | ratio | "
        "forward+gradient ms | per item | ratio to 2 products |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for B, floor, fwd, grad in rows:
        print(
            f"| {B} | {floor * 1e3:.2f} | {fwd * 1e3:.2f} | {fwd * 1e3 / B:.2f} | "
            f"{fwd / floor:.2f} | {grad * 1e3:.2f} | {grad * 1e3 / B:.2f} | "
            f"{grad / (2 * floor):.2f} |"
        )
    if args.svd:
        with tempfile.TemporaryDirectory() as cache:
            cmd = [
                sys.executable,
                __file__,
                "--svd-child",
                "--cache",
                cache,
                "--size",
                str(n),
                "--receivers",
                str(R),
                "--transmitters",
                str(T),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
        print(
            f"\nSVD set-up: {res['seconds']:.1f} s, peak resident memory "
            f"{res['peak'] / 2**30:.2f} GiB, cached factors {res['bytes'] / 2**30:.2f} GiB, "
            f"rank {res['rank']} of {min(2 * T * R, n * n)}"
        )


if __name__ == "__main__":
    main()
