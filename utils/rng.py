"""Per-item random streams, so that results do not depend on batch size, order or device count.

Every test item owns a ``torch.Generator`` seeded from integers that identify it: (run seed,
item id, purpose). Drawing noise for a batch draws each item's rows (its samples or particles)
from its own stream and concatenates them (the idea behind EDM's ``StackedRandomGenerator``).
Sample k of item i is therefore the same whatever the batch size or order. Nothing here touches the
global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Purposes: independent streams for the same item.
OBSERVATION = 0
ALGORITHM = 1
DATA = 2
EVALUATION = 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing)."""
    entropy = [int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class BatchRNG:
    """One generator per stream (a test item); each stream owns ``rows_per_stream`` consecutive
    rows (the item's samples or particles). Draws are ``(streams * rows_per_stream, *shape)``:
    every stream draws its rows' block in one call, so a row's values depend only on its stream's
    seed and its index within the stream -- not on the batch size or order of the streams.
    """

    def __init__(
        self, seeds: Sequence[int], device: torch.device | str = "cpu", rows_per_stream: int = 1
    ):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.rows_per_stream = int(rows_per_stream)
        self.generators = []
        for s in self.seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.generators.append(g)

    @classmethod
    def for_items(cls, seed: int, ids: Sequence[int], purpose: int, device="cpu") -> BatchRNG:
        return cls([derive_seed(seed, int(i), purpose) for i in ids], device)

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.seeds) * self.rows_per_stream

    def expand(self, n: int) -> BatchRNG:
        """Fresh streams (derived from these seeds) that own ``n`` times as many rows each:
        row r of the parent becomes rows r*n ... r*n + n - 1 (item-major)."""
        return BatchRNG(
            [derive_seed(s, 17) for s in self.seeds], self.device, self.rows_per_stream * n
        )

    def split(self, n: int) -> list[BatchRNG]:
        """``n`` independent sets of streams with the same row layout."""
        return [
            BatchRNG(
                [derive_seed(s, 1_000_003 + k) for s in self.seeds],
                self.device,
                self.rows_per_stream,
            )
            for k in range(n)
        ]

    def _draw(self, fn, shape, dtype) -> torch.Tensor:
        blocks = [
            fn((self.rows_per_stream, *shape), generator=g, device=self.device, dtype=dtype)
            for g in self.generators
        ]
        return torch.cat(blocks)

    def randn(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return self._draw(torch.randn, shape, dtype)

    def rand(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return self._draw(torch.rand, shape, dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``x`` (rows first); complex x gets circular complex normal noise."""
        if x.shape[0] != len(self):
            raise ValueError(f"tensor has {x.shape[0]} rows but the RNG has {len(self)}")
        return self.randn(*x.shape[1:], dtype=x.dtype).to(x.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        blocks = [
            torch.randint(high, (self.rows_per_stream, *shape), generator=g, device=self.device)
            for g in self.generators
        ]
        return torch.cat(blocks)

    def numpy(self, stream: int) -> np.random.Generator:
        """A numpy generator for one stream (for numpy/scipy code paths)."""
        return np.random.default_rng(derive_seed(self.seeds[stream], 7))


class ReplayRNG:
    """Replays recorded draws behind ``BatchRNG``'s interface: each ``randn`` / ``rand`` /
    ``randn_like`` / ``randint`` call returns the next recorded tensor, whose shape must be the one
    asked for. Used by the parity tests: the reference's random draws (torch's global RNG) are
    recorded in the order its code makes them, and an algorithm given this RNG consumes the same
    numbers, so both sides can be compared draw for draw. ``expand`` and ``split`` return views on
    the same queue (the reference draws from one global stream)."""

    def __init__(self, draws: Sequence[torch.Tensor], rows: int, device="cpu"):
        self.queue = _Queue([torch.as_tensor(d) for d in draws])
        self.rows = int(rows)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.rows

    @property
    def remaining(self) -> int:
        """Recorded draws not consumed yet (a parity test expects 0 at the end)."""
        return len(self.queue.draws) - self.queue.next

    def expand(self, n: int) -> ReplayRNG:
        out = ReplayRNG([], self.rows * int(n), self.device)
        out.queue = self.queue
        return out

    def split(self, n: int) -> list[ReplayRNG]:
        return [self] * int(n)

    def _take(self, shape, dtype) -> torch.Tensor:
        q = self.queue
        if q.next >= len(q.draws):
            raise RuntimeError(
                f"ReplayRNG: draw {q.next} of shape {tuple(shape)} asked for, "
                f"but only {len(q.draws)} were recorded"
            )
        out = q.draws[q.next]
        if tuple(out.shape) != tuple(shape):
            raise RuntimeError(
                f"ReplayRNG: draw {q.next} was recorded with shape {tuple(out.shape)} but "
                f"{tuple(shape)} is asked for (the two codes draw in a different order)"
            )
        q.next += 1
        return out.to(self.device, dtype)

    def randn(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return self._take((self.rows, *shape), dtype)

    def rand(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        return self._take((self.rows, *shape), dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self._take(tuple(x.shape), x.dtype).to(x.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return self._take((self.rows, *shape), torch.int64)

    def numpy(self, stream: int) -> np.random.Generator:
        raise NotImplementedError("ReplayRNG replays torch draws only")


class _Queue:
    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.next = draws, 0
