"""Shared algorithm checks over every algorithm config of the registry (tests/registry.py), on the
Gaussian-mixture toy at a tiny size, built as main.py builds them (counted network and operator):
items solved together equal each item solved alone, nothing carries over between calls, and the
compute is counted per item."""

from __future__ import annotations

import pytest
import torch

from main import build
from tests.conftest import make_config
from tests.registry import ALGORITHMS, GMM_TINY, NOT_ON_GMM
from utils.results import collate
from utils.rng import ALGORITHM, OBSERVATION, BatchRNG

N = 3  # samples per item


def _counts(c) -> tuple[int, int, int, int]:
    return (c.nfe, c.op_forward, c.op_gradient, c.op_linear)


@pytest.mark.parametrize("name", sorted(set(ALGORITHMS) - set(NOT_ON_GMM)))
def test_batching_state_and_counts(name, tmp_path):
    """Together == alone (to 1e-5: batched matrix products round differently), a repeated call
    gives the same numbers exactly, and a batch costs what its items cost alone (every row
    counted)."""
    cfg = make_config([*GMM_TINY, f"algorithm={name}", *ALGORITHMS[name]], tmp_path)
    op, testset, algo, _, counts = build(cfg, torch.device("cpu"))
    ids = [int(i) for i in testset.id_list[:2]]
    data = collate([testset[i] for i in range(2)])
    obs = op(data, BatchRNG.for_items(0, ids, OBSERVATION))

    def solve(o, item_ids, rows):
        extra = {"target": data["target"][rows]} if getattr(algo, "uses_target", False) else {}
        counts.reset()
        x = algo.inference(
            o, num_samples=N, rng=BatchRNG.for_items(0, item_ids, ALGORITHM), **extra
        )
        return x, _counts(counts)

    together, cost = solve(obs, ids, slice(0, 2))
    assert together.shape == (2 * N, *data["target"].shape[1:]) and torch.isfinite(together).all()
    assert sum(cost) > 0, "no compute counted"
    costs_alone = []
    for i, item_id in enumerate(ids):
        alone, cost_one = solve(obs.item(i), [item_id], slice(i, i + 1))
        torch.testing.assert_close(alone, together[N * i : N * i + N], rtol=1e-5, atol=1e-5)
        costs_alone.append(cost_one)
    # L-BFGS's line search makes a different number of evaluations per item
    assert tuple(map(sum, zip(*costs_alone, strict=True))) == cost, (costs_alone, cost)
    again, _ = solve(obs, ids, slice(0, 2))
    torch.testing.assert_close(again, together, rtol=0, atol=0)
