"""The algorithm contract.

An algorithm is built from a denoiser ``net(x, sigma)`` (with ``shape``, ``sigma_min``,
``sigma_max``) and a forward operator, plus its hyperparameters. ``inference(observation,
num_samples, rng)`` returns ``num_samples`` normalized reconstructions per observed item, as
(B * num_samples, C, H, W) in item-major order. All randomness comes from ``rng`` (one stream per
item, see utils/rng.py); never from the global RNG.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from inverse_problems.base import Observation, require_capabilities, rows_per_item
from utils.rng import ALGORITHM, BatchRNG


def chunked(fn, x: torch.Tensor, chunk_size: int | None, *args) -> torch.Tensor:
    """``fn(x[rows], *args)`` over chunks of at most ``chunk_size`` rows, concatenated (bounded
    memory for large ensembles; ``None`` or 0 means one call)."""
    if not chunk_size or x.shape[0] <= chunk_size:
        return fn(x, *args)
    return torch.cat([fn(part, *args) for part in x.split(int(chunk_size))])


def singular_values(forward_op, observation: Observation) -> torch.Tensor:
    """(B, m) float64 singular values per item. Operators without per-item physics (one matrix
    for every item, e.g. inverse scattering) return a single row, broadcast here."""
    s = forward_op.singular_values(**observation.physics).to(torch.float64)
    s = s.reshape(-1, s.shape[-1]).to(observation.y.device)
    return s.expand(observation.batch, -1).contiguous() if s.shape[0] == 1 else s


def chunked_items(fn, x: torch.Tensor, observation: Observation, chunk_size: int | None):
    """``fn(rows, sub_observation)`` over chunks of at most ``chunk_size`` rows that respect the
    item grouping (operator calls: each chunk gets the observation of the items it covers).
    Whole items are grouped when they fit in a chunk; an item's rows are split otherwise."""
    B = observation.batch
    n = rows_per_item(x, B)
    if not chunk_size or x.shape[0] <= chunk_size:
        return fn(x, observation)
    chunk_size = int(chunk_size)
    if chunk_size >= n:
        k = chunk_size // n
        parts = [
            fn(x[s * n : min(s + k, B) * n], observation.items(s, min(s + k, B)))
            for s in range(0, B, k)
        ]
    else:
        parts = [
            fn(part, observation.item(i))
            for i in range(B)
            for part in x[i * n : (i + 1) * n].split(chunk_size)
        ]
    return torch.cat(parts)


class Algo(ABC):
    #: Operator capabilities the algorithm needs (inverse_problems/base.py).
    requires: frozenset[str] = frozenset()
    #: False for prior-free methods: main.py then loads no checkpoint and passes a stand-in with
    #: the image shape (models.loading.NoPrior).
    uses_prior: bool = True

    def __init__(self, net, forward_op):
        require_capabilities(self.requires, forward_op, type(self).__name__)
        self.net = net
        self.forward_op = forward_op

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.net.shape)

    def sample_rng(self, observation: Observation, num_samples: int, rng: BatchRNG | None):
        """One stream per output row (item-major); a default seed-0 RNG when none is given."""
        if rng is None:
            rng = BatchRNG.for_items(
                0, range(observation.batch), ALGORITHM, device=observation.y.device
            )
        if len(rng) != observation.batch:
            raise ValueError(f"rng has {len(rng)} streams for {observation.batch} items")
        return rng.expand(num_samples)

    @abstractmethod
    def inference(
        self, observation: Observation, num_samples: int = 1, rng: BatchRNG | None = None
    ) -> torch.Tensor:
        """Normalized reconstructions, (observation.batch * num_samples, C, H, W)."""


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row, shaped to broadcast against x."""
    return x.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.dim() - 1))
