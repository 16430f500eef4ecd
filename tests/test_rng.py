"""Per-item random streams: no dependence on batch-mates, no use of the global RNG."""

from __future__ import annotations

import pytest
import torch

from utils.helper import parse_int_list
from utils.rng import BatchRNG, derive_seed


def test_stream_ignores_batch_mates():
    together = BatchRNG([11, 22, 33]).expand(4)
    alone = BatchRNG([22]).expand(4)
    torch.testing.assert_close(together.randn(5)[4:8], alone.randn(5))
    assert len(together) == 12


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    BatchRNG([1, 2]).randn(3)
    BatchRNG.for_items(0, [3, 4], 1).expand(2).rand(2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_derive_seed_separates_keys():
    seeds = {derive_seed(s, i, p) for s in range(3) for i in range(20) for p in range(4)}
    assert len(seeds) == 3 * 20 * 4
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)


def test_split_streams_are_independent():
    a, b = BatchRNG([7]).split(2)
    assert not torch.allclose(a.randn(8), b.randn(8))


def test_randn_like_checks_rows():
    rng = BatchRNG([1, 2])
    try:
        rng.randn_like(torch.zeros(3, 2))
    except ValueError as err:
        assert "3 rows" in str(err)
    else:
        raise AssertionError("row mismatch not detected")


def test_parse_int_list():
    assert parse_int_list("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_int_list(5) == [5] and parse_int_list([1, 2]) == [1, 2]
    assert parse_int_list(None) is None


def test_replay_rng_returns_recorded_draws_in_order_and_checks_shapes():
    from utils.rng import ReplayRNG

    a, b = torch.randn(2, 3), torch.rand(4, 5)
    rng = ReplayRNG([a, b], rows=2)
    assert torch.equal(rng.randn(3), a)
    wide = rng.expand(2)  # same queue, rows item-major x2
    assert len(wide) == 4 and torch.equal(wide.rand(5), b)
    assert rng.remaining == 0
    with pytest.raises(RuntimeError, match="only 2 were recorded"):
        rng.randn(3)
    rng = ReplayRNG([a], rows=2)
    with pytest.raises(RuntimeError, match="recorded with shape"):
        rng.randn(4)
