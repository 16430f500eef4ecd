"""Progress and per-step scalars from inside an algorithm's loop, without logging code in it.

An algorithm calls ``report(step, total, **scalars)`` once per iteration (e.g. per diffusion step),
with scalars such as ``data_fitting_loss`` (the reference's name for sqrt of the data misfit, which
its FWI and Navier–Stokes sweep files optimise). Whoever runs the algorithm decides what happens
with it: ``main.py`` moves a progress bar nested under the per-item bar and, with wandb, logs the
scalars; outside any ``reporting`` block a report costs nothing and goes nowhere. The receiver is
held in a context variable (per thread / task), so nested or concurrent runs do not mix.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import torch

Receiver = Callable[[int, int, dict], None]
_receiver: contextvars.ContextVar[Receiver | None] = contextvars.ContextVar(
    "inversebench_progress", default=None
)


def as_float(value) -> float:
    """A scalar from a number or a tensor (the mean of its entries)."""
    if torch.is_tensor(value):
        return float(value.detach().to(torch.float64).mean())
    return float(value)


def report(step: int, total: int, **scalars) -> None:
    """Iteration ``step`` (0-based) of ``total`` is done; ``scalars``: numbers, or tensors with
    one value per row of the batch (receivers reduce them, e.g. with ``as_float``)."""
    receiver = _receiver.get()
    if receiver is not None:
        receiver(int(step), int(total), scalars)


@contextlib.contextmanager
def reporting(receiver: Receiver):
    """Send the ``report`` calls made inside the block to ``receiver(step, total, scalars)``
    (``scalars`` as given to ``report``)."""
    token = _receiver.set(receiver)
    try:
        yield
    finally:
        _receiver.reset(token)
