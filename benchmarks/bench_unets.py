"""CPU cost of the ADM backbone (Dhariwal & Nichol 2021, EDM form of Karras et al. 2022) of the
fwi / inv-scatter / navier-stokes priors: forward and forward + input gradient, batch 1 vs 4.

    python benchmarks/bench_unets.py [--repeats 5] [--threads N]

Times are medians over repeats after one warm-up. "faults/call" counts minor page faults per call:
glibc serves every allocation of 32 MiB or more (one 128-channel 128x128 activation at batch 4)
with a fresh mmap, so each such activation is page-faulted in again on every call; that, and
activations outgrowing the last-level cache, is why batch 4 costs more than 4x batch 1 here.
Shared machines are noisy: compare numbers from one run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.unets import DhariwalUNet

CONFIG = dict(
    img_resolution=128, in_channels=1, out_channels=1, label_dim=0, model_channels=128,
    channel_mult=[1, 1, 1, 2, 2], attn_resolutions=[16], num_blocks=1, dropout=0.0,
)  # fmt: skip


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """Median and minimum seconds per call, minor page faults per call; after one warm-up."""
    fn()
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return statistics.median(times), min(times), faults / repeats


def unet_table(repeats: int) -> None:
    torch.manual_seed(0)
    net = DhariwalUNet(**CONFIG)
    with torch.no_grad():  # nonzero output layers, as in a trained prior
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    net.eval().requires_grad_(False)  # as models.loading.build_prior leaves a prior
    n_params = sum(p.numel() for p in net.parameters())
    print(f"DhariwalUNet dhariwal-128 ({n_params / 1e6:.1f} M parameters), CPU, "
          f"{torch.get_num_threads()} threads, median of {repeats}")  # fmt: skip
    header = f"{'batch':>5}{'pass':>16}{'s/call':>9}{'min s':>8}{'s/sample':>10}{'faults/call':>13}"
    print(header)
    results = {}
    for batch in (1, 4):
        x0 = torch.randn(batch, 1, 128, 128)
        sigma = torch.full((batch,), 0.5)

        def forward(x0=x0, sigma=sigma):
            with torch.no_grad():
                net(x0, sigma)

        def forward_grad(x0=x0, sigma=sigma):
            x = x0.clone().requires_grad_(True)
            torch.autograd.grad(net(x, sigma).square().sum(), x)

        for name, fn in (("forward", forward), ("fwd+input grad", forward_grad)):
            sec, best, faults = timed(fn, repeats)
            results[batch, name] = sec
            row = f"{batch:>5}{name:>16}{sec:>9.2f}{best:>8.2f}{sec / batch:>10.2f}{faults:>13.0f}"
            print(row)
    for name in ("forward", "fwd+input grad"):
        ratio = results[4, name] / results[1, name]
        print(f"batch4/batch1 {name}: {ratio:.2f}x (linear scaling: 4.00x)")


def attention_table(repeats: int) -> None:
    """SDPA on the network's bottleneck shape: strided (B*heads, L, d) views of the qkv conv, as
    the reference passes them, fall back to the math kernel; the contiguous 4-D (B, heads, L, d)
    layout used by models.modules.UNetBlock runs the fused flash kernel forward and backward."""
    heads, c, length = 4, 256, 256
    d = c // heads
    print(f"\nscaled_dot_product_attention, {heads} heads x {d} ch, {length} tokens: ms fwd+grad")
    print(f"{'batch':>5}{'strided 3-D':>13}{'contiguous 4-D':>16}")
    for batch in (1, 4):
        qkv0 = torch.randn(batch, 3 * c, length)

        def strided(qkv0=qkv0, batch=batch):
            qkv = qkv0.clone().requires_grad_(True)
            q, k, v = qkv.reshape(batch * heads, d, 3, length).permute(0, 3, 2, 1).unbind(2)
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), qkv)

        def contiguous(qkv0=qkv0, batch=batch):
            qkv = qkv0.clone().requires_grad_(True)
            qkv5 = qkv.reshape(batch, heads, d, 3, length).permute(3, 0, 1, 4, 2)
            q, k, v = qkv5.contiguous().unbind(0)
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), qkv)

        t_s = timed(strided, max(repeats, 5))[0]
        t_c = timed(contiguous, max(repeats, 5))[0]
        print(f"{batch:>5}{t_s * 1e3:>13.1f}{t_c * 1e3:>16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unet_table(args.repeats)
    attention_table(args.repeats)


if __name__ == "__main__":
    main()
