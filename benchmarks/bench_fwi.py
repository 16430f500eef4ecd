"""Cost of the full-waveform-inversion operator (inverse_problems/acoustic.py).

    python benchmarks/bench_fwi.py                      # problem=fwi: 128^2, 16 shots, 1 s at 1 ms
    python benchmarks/bench_fwi.py --problem fwi-small --batches 1 4

Prints wall seconds per call and per model of the forward map and of the adjoint-state gradient
(forward with the wavefield saved, plus the adjoint solve), for batch 1 and 4, and the peak memory
of this process and its Dask workers together (resident set sizes summed, sampled every 20 ms).
The first call (cluster start, Devito's operator build and JIT compile) is reported separately.
Models: CurveFault-like maps from training/fwi.py resized to the grid, as the data loader does.
The reference on this machine's 2-core CPU (issue 8): forward 38.7 s, gradient 76.7 s, peak 5.5 GB
for one model. Medians over repeats; compare ratios on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.timing import median_time  # noqa: E402
from inverse_problems.base import Observation  # noqa: E402
from training.fwi import generate  # noqa: E402

REFERENCE = {"forward": 38.7, "gradient": 76.7, "peak_gb": 5.5}


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants while active."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._total())

    def __enter__(self):
        self.peak = self._total()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def models(op, batch: int) -> torch.Tensor:
    """Normalized CurveFault-like models (batch, 1, nz, nx), km/s - 3."""
    nx, nz = op.survey.shape
    v = torch.from_numpy(generate(batch, 70, seed=123)).reshape(batch, 1, 70, 70) / 1000.0
    v = F.interpolate(v, size=(nz, nx), mode="bilinear", antialias=True, align_corners=False)
    return op.normalize(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="fwi")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n-workers", type=int, default=None, help="Dask workers (0: in process)")
    p.add_argument("--shots-per-task", type=int, default=1)
    args = p.parse_args()
    cfg = OmegaConf.load(ROOT / "configs" / "problem" / f"{args.problem}.yaml").model
    cfg.n_workers, cfg.shots_per_task = args.n_workers, args.shots_per_task
    op = instantiate(cfg, device="cpu")
    s = op.survey
    print(
        f"# {args.problem}: {s.shape} grid + {s.nbl} absorbing cells, {s.nshots} shots, "
        f"{len(s.receivers)} receivers, {s.nt} samples; workers: "
        f"{'in process' if args.n_workers == 0 else args.n_workers or 'one per core'}, "
        f"{args.shots_per_task} shot(s) per task"
    )
    try:
        x1 = models(op, 1)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            y = op.forward(x1)
            op.gradient(x1 * 0.9, Observation(y))
        print(
            f"# first forward + gradient (start, build, compile): {time.perf_counter() - t0:.1f} s"
        )
        print(
            "| batch | forward s/call | s/model | vs reference | fwd+grad s/call | s/model "
            "| vs reference | peak GB (all processes) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for B in args.batches:
            x = models(op, B)
            obs = Observation(op.forward(x))
            probe = x * 0.9
            with PeakMemory() as mem:
                fwd = median_time(lambda: op.forward(probe), args.repeats, op.device)  # noqa: B023
                grad = median_time(lambda: op.gradient(probe, obs), args.repeats, op.device)  # noqa: B023
            print(
                f"| {B} | {fwd:.2f} | {fwd / B:.2f} | {REFERENCE['forward'] / (fwd / B):.1f}x "
                f"| {grad:.2f} | {grad / B:.2f} | {REFERENCE['gradient'] / (grad / B):.1f}x "
                f"| {mem.peak / 2**30:.2f} |"
            )
    finally:
        op.close()


if __name__ == "__main__":
    main()
