"""Shared timing helper for the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import torch


def median_time(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call
    (synchronizing CUDA around each call)."""
    return statistics.median(interleaved_times({"fn": fn}, repeats, device)["fn"])


def interleaved_times(fns: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Wall seconds of each ``fns[name]()`` over ``repeats`` rounds after one warm-up call each;
    every round calls each function once in turn, so slow drifts of a shared machine hit all of
    them alike (compare them through per-round ratios)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times
