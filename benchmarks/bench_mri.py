"""Cost of the multi-coil MRI (SENSE) operator (inverse_problems/multi_coil_mri.py).

    python benchmarks/bench_mri.py                       # 320^2, 15 coils, batch 1 and 8
    python benchmarks/bench_mri.py --size 64 --coils 6   # the small problem

Prints, for float32 and float64 images: forward and forward+gradient seconds per call and per
sample at each batch size, and their ratio to the floor -- the bare batched FFT of the coil images
(torch.fft.fft2 over B x coils x H x W; forward is one, the gradient two). Then, per item, the
network evaluations (NFE) and operator gradients that ``dps``, ``score_mri`` and ``csgm_mri``
make at their configured settings (counted by running them with an analytic prior on a 16^2
problem), and the operator seconds per item that implies at this size. Medians over repeats
after a warm-up; compare ratios, not seconds, on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate

from benchmarks.timing import median_time
from inverse_problems.base import Observation
from inverse_problems.multi_coil_mri import MultiCoilMRI
from models.analytic import AnalyticPrior
from training.mri import birdcage_maps
from utils.compute import CountingNet, CountingOperator, Counts
from utils.distributions import gaussian
from utils.rng import BatchRNG

ROOT = Path(__file__).resolve().parents[1]


def calls_per_item(name: str) -> Counts:
    """NFE and operator calls of one sample of algorithm ``name`` (its YAML's settings)."""
    n = 16
    prior = AnalyticPrior(gaussian(torch.zeros(2 * n * n), torch.eye(2 * n * n)), (2, n, n))
    op = MultiCoilMRI(total_lines=n, acceleration_ratio=4, sigma_noise=0.01)
    maps = birdcage_maps(4, n)[None]
    obs = op({"target": torch.zeros(1, 2, n, n), "maps": maps}, BatchRNG.for_items(0, [0], 0))
    counts = Counts()
    cfg = OmegaConf.load(ROOT / "configs" / "algorithm" / f"{name}.yaml").method
    algo = instantiate(cfg, net=CountingNet(prior, counts), forward_op=CountingOperator(op, counts))
    algo.inference(obs, num_samples=1, rng=BatchRNG.for_items(0, [0], 1))
    return counts


def time_case(op: MultiCoilMRI, dtype, B: int, coils: int, repeats: int):
    """Median seconds of the FFT floor, forward and gradient for a batch of B images."""
    device, n = op.device, op.lines.numel()
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    g = torch.Generator().manual_seed(0)
    maps = birdcage_maps(coils, n).to(cdtype)[None].expand(B, -1, -1, -1).to(device)
    mask = op.default_mask().expand(B, -1, -1)
    x = torch.randn(B, 2, n, n, generator=g, dtype=dtype).to(device)
    obs = Observation(op.forward(x.flip(-1), maps, mask), {"maps": maps, "mask": mask})
    coil_images = torch.randn(B, coils, n, n, dtype=cdtype, generator=g).to(device)
    floor = median_time(lambda: torch.fft.fft2(coil_images), repeats, device)
    fwd = median_time(lambda: op.forward(x, maps, mask), repeats, device)
    grad = median_time(lambda: op.gradient(x, obs), repeats, device)
    return floor, fwd, grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--coils", type=int, default=15)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-calls", action="store_true", help="skip the per-algorithm call counts")
    args = p.parse_args()
    device = torch.device(args.device)
    n, coils = args.size, args.coils
    op = MultiCoilMRI(total_lines=n, acceleration_ratio=4, device=device)
    print(f"# {n}x{n}, {coils} coils, R = 4, {device}, {torch.get_num_threads()} threads")
    print(
        "| dtype | batch | forward s/call | s/sample | / FFT floor "
        "| fwd+grad s/call | s/sample | / 2 FFT floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    grad_seconds = {}
    for dtype in (torch.float32, torch.float64):
        for B in args.batches:
            floor, fwd, grad = time_case(op, dtype, B, coils, args.repeats)
            grad_seconds[(dtype, B)] = grad / B
            name = str(dtype).removeprefix("torch.")
            print(
                f"| {name} | {B} | {fwd:.4f} | {fwd / B:.4f} | {fwd / floor:.2f} "
                f"| {grad:.4f} | {grad / B:.4f} | {grad / (2 * floor):.2f} |"
            )
    if args.no_calls:
        return
    B = max(args.batches)
    per = grad_seconds[(torch.float32, B)]
    print(f"\n# calls per item (one sample); operator seconds from float32 batch {B}")
    print("| algorithm | NFE | op gradients | op forwards | operator s/item |")
    print("|---|---|---|---|---|")
    for name in ("dps", "score_mri", "csgm_mri"):
        c = calls_per_item(name)
        print(
            f"| {name} | {c.nfe} | {c.op_gradient} | {c.op_forward} | {c.op_gradient * per:.1f} |"
        )


if __name__ == "__main__":
    main()
