"""The test item as it travels through a run: measurements and per-item physics.

Defined here, below every layer (operators produce it, algorithms and evaluators read it, the run
record stores it); ``inverse_problems.base`` re-exports it as part of the operator contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Observation:
    """Measurements of B test items plus their per-item physics parameters."""

    y: torch.Tensor
    physics: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    def to(self, device) -> Observation:
        return Observation(self.y.to(device), {k: v.to(device) for k, v in self.physics.items()})

    def item(self, i: int) -> Observation:
        """Item i alone (a batch of one)."""
        return Observation(self.y[i : i + 1], {k: v[i : i + 1] for k, v in self.physics.items()})

    def items(self, start: int, stop: int) -> Observation:
        """Items start ... stop - 1 (a batch of stop - start)."""
        return Observation(self.y[start:stop], {k: v[start:stop] for k, v in self.physics.items()})

    def state_dict(self) -> dict:
        """Plain tensors, loadable with ``torch.load(weights_only=True)``."""
        return {
            "y": self.y.detach().cpu(),
            "physics": {k: v.cpu() for k, v in self.physics.items()},
        }
