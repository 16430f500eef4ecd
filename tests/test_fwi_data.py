"""FWI data: the CurveFault-like generator, the reference's LMDB layout and normalization, and
the shipped small prior (checkpoints/fwi-small.pt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.dataset import LMDBData, write_lmdb
from training.fwi import V_MAX, V_MIN, _unfault, curve_fault, generate, render, without_faults

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = ROOT / "data/fwi-small/test"


def _normalized(maps: np.ndarray, resolution: int) -> torch.Tensor:
    """What LMDBData(raw_resolution=70, mean=3000, std=500) makes of raw maps."""
    x = F.interpolate(
        torch.from_numpy(maps), size=(resolution,) * 2, mode="bilinear", antialias=True
    )
    return (x - 3000.0) / 1000.0


def test_generator_is_reproducible_per_map():
    a, b = generate(6, seed=3), generate(6, seed=3)
    assert a.dtype == np.float32 and a.shape == (6, 1, 70, 70)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(generate(3, seed=3), a[:3])  # map i depends on (seed, i) only
    assert not np.array_equal(generate(6, seed=4), a)


def test_maps_are_faulted_layer_stacks_in_range():
    """Velocities within 1.5-4.5 km/s; 3-6 layers growing faster with depth on the whole; 1-2
    faults that each displace the stack on their hanging-wall side and nowhere else."""
    bottom_faster = 0
    for i in range(40):
        model = curve_fault(np.random.default_rng(i))
        v = render(model)
        assert V_MIN <= v.min() and v.max() <= V_MAX
        assert 1 <= len(model.faults) <= 2 and 3 <= len(model.velocities) <= 6
        assert len(np.unique(v)) <= len(model.velocities)  # piecewise constant, sharp edges
        bottom_faster += v[-5:].mean() > v[:5].mean()
        moved = v != render(without_faults(model))
        assert moved.any(), f"map {i}: no layer displacement"
        c = (np.arange(70) + 0.5) / 70
        z, x = np.meshgrid(c, c, indexing="ij")
        hanging = np.zeros_like(moved)
        for fault in model.faults:
            hanging |= _unfault(fault, x, z)[0] != x
        assert not (moved & ~hanging).any(), f"map {i}: change off the hanging walls"
    assert bottom_faster >= 32  # roughly, not strictly, increasing with depth


def test_lmdb_round_trip_in_the_reference_layout(tmp_path):
    import lmdb

    maps = generate(5, seed=7)
    write_lmdb(tmp_path / "fwi", list(maps))
    env = lmdb.open(str(tmp_path / "fwi"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.stat()["entries"] == 5
        for i in range(5):
            raw = np.frombuffer(txn.get(str(i).encode()), dtype=np.float32).reshape(1, 70, 70)
            np.testing.assert_array_equal(raw, maps[i])
    env.close()


def test_shipped_test_split_is_regenerated_bit_for_bit():
    ds = LMDBData(TEST_SPLIT, resolution=70, raw_resolution=70, mean=3000.0, std=500.0)
    assert len(ds) == 16
    np.testing.assert_array_equal(np.stack([ds.raw(i) for i in range(16)]), generate(16, seed=1))


@pytest.mark.parametrize("resolution", [64, 128])
def test_lmdb_data_resizes_and_normalizes_to_km_s_minus_3(resolution):
    """The reference's FWI data settings: x = v[km/s] - 3 in [-1.5, 1.5], 70 -> resolution with
    bilinear antialiased resizing (the operator's unnorm_shift 3, unnorm_scale 1 undo it)."""
    ds = LMDBData(
        TEST_SPLIT, resolution=resolution, raw_resolution=70, mean=3000.0, std=500.0, id_list="2-5"
    )
    x = torch.stack([ds[i]["target"] for i in range(len(ds))])
    assert x.shape == (4, 1, resolution, resolution) and x.dtype == torch.float32
    assert float(x.abs().max()) <= 1.5 + 1e-5  # resizing averages neighbours (float32 round-off)
    raw = np.stack([ds.raw(i) for i in range(4)])
    torch.testing.assert_close(x, _normalized(raw, resolution))
    assert abs(float(x.mean()) - (raw.mean() / 1000 - 3)) < 0.01  # resizing keeps the mean
    native = LMDBData(TEST_SPLIT, resolution=70, raw_resolution=70, mean=3000.0, std=500.0)
    torch.testing.assert_close(native[0]["target"], torch.from_numpy(native.raw(0) / 1000 - 3))


def _layering(x: torch.Tensor) -> float:
    """Mean |vertical step| over mean |horizontal step|: large for a layer stack."""
    dz = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return float(dz / dx)


def test_shipped_small_prior_matches_the_data():
    """Samples of checkpoints/fwi-small.pt: the data's velocity level and spread, in range, and
    layered (vertical contrasts dominate) like the training maps."""
    from tests.conftest import shipped_prior_samples

    x = shipped_prior_samples("fwi-small", "fwi-small.pt", 8, steps=20)
    t = _normalized(generate(256, seed=0), 64)
    stats = (float(x.mean()), float(x.std()), _layering(x), float(t.std()), _layering(t))
    assert abs(stats[0] - float(t.mean())) < 0.3, stats
    assert 0.65 < stats[1] / stats[3] < 1.2, stats  # under-dispersed: ~0.8
    assert float((x.abs() <= 1.5 + 0.05).float().mean()) > 0.98
    assert stats[2] > 0.6 * stats[4], stats
