"""Cost of the black-hole imaging operator (inverse_problems/blackhole.py).

    python benchmarks/bench_blackhole.py            # 64^2, EHT 2017 toward M87*, batch 1 and 32

Prints forward and forward+gradient (autograd) seconds per call and per item at each batch size,
and the batch-to-batch-1 ratio of the per-item times (goal: <= 1). The reference on a 2-core CPU
(issue 7): forward 4 ms and gradient 54 ms at batch 1, 0.76 s and 4.4 s at batch 32. Medians
over repeats after a warm-up; compare ratios, not seconds, on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_time
from inverse_problems.blackhole import BlackHoleImaging
from utils.rng import BatchRNG

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    op = BlackHoleImaging(
        array_file=str(ROOT / "data/eht/EHT2017_m87.txt"), imsize=args.size, noise_type="eht",
        flux_scale=0.003 * (64 / args.size) ** 2, device=device,
    )  # fmt: skip
    m, c, l, _ = op.sizes
    print(
        f"# {args.size}^2, {m} visibilities, {c} closure phases, {l} log closure amplitudes, "
        f"{device}, {torch.get_num_threads()} threads"
    )
    print(
        "| batch | forward s/call | s/item | fwd+grad s/call | s/item | per-item vs batch 1 "
        "(fwd, grad) |"
    )
    print("|---|---|---|---|---|---|")
    base = None
    for B in args.batches:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(B, 1, args.size, args.size, generator=g) * 2 - 1).to(device)
        obs = op({"target": x}, BatchRNG.for_items(0, range(B), 0, device=device))
        probe = x.flip(-1)
        fwd = median_time(lambda: op.forward(probe), args.repeats, device)  # noqa: B023
        grad = median_time(lambda: op.gradient(probe, obs), args.repeats, device)  # noqa: B023
        if base is None:
            base = (fwd / B, grad / B)
        print(
            f"| {B} | {fwd:.4f} | {fwd / B:.5f} | {grad:.4f} | {grad / B:.5f} | "
            f"{fwd / B / base[0]:.2f}, {grad / B / base[1]:.2f} |"
        )


if __name__ == "__main__":
    main()
