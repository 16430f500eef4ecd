"""The reference's LMDB format: round trip, resize and normalization, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.dataset import LMDBData, write_lmdb
from training.exact import PriorDraws
from utils.distributions import matern_field


def test_lmdb_round_trip(tmp_path):
    arrays = [
        np.random.default_rng(i).uniform(0, 1, (1, 8, 8)).astype(np.float32) for i in range(4)
    ]
    write_lmdb(tmp_path, arrays)
    data = LMDBData(tmp_path, resolution=8, mean=0.5, std=0.25, id_list="1-3")
    assert len(data) == 3
    for k, i in enumerate((1, 2, 3)):
        np.testing.assert_array_equal(data.raw(k), arrays[i])
        expected = (torch.from_numpy(arrays[i]) - 0.5) / 0.5  # [0, 1] -> [-1, 1]
        torch.testing.assert_close(data[k]["target"], expected)


def test_lmdb_resizes_with_antialiasing(tmp_path):
    """FWI layout: raw 70x70 m/s resized to 128, normalized as (v - 3000) / 1000."""
    v = np.full((1, 70, 70), 4000.0, dtype=np.float32)
    write_lmdb(tmp_path, [v])
    item = LMDBData(tmp_path, resolution=128, raw_resolution=70, mean=3000, std=500)[0]["target"]
    assert item.shape == (1, 128, 128)
    torch.testing.assert_close(item, torch.ones(1, 128, 128))


def test_missing_dataset_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.mdb"):
        LMDBData(tmp_path / "nowhere")


def test_ids_out_of_range(tmp_path):
    write_lmdb(tmp_path, [np.zeros((1, 4, 4), np.float32)])
    with pytest.raises(ValueError, match="outside"):
        LMDBData(tmp_path, resolution=4, id_list=[0, 5])


def test_prior_samples_dataset():
    data = PriorDraws(matern_field(size=8), num_items=10, seed=1)
    assert len(data) == 10 and data[3]["target"].shape == (1, 8, 8)
    again = PriorDraws(matern_field(size=8), num_items=10, seed=1)
    assert torch.equal(data[3]["target"], again[3]["target"])


def test_two_readers_of_one_lmdb_in_one_process(tmp_path):
    """LMDB refuses a second handle on an open environment; readers share one (this failed when
    a run's test set and another reader of the same folder were alive together)."""
    import numpy as np

    from training.dataset import LMDBData, write_lmdb

    write_lmdb(tmp_path / "db", [np.full((1, 4, 4), i, dtype=np.float32) for i in range(3)])
    a = LMDBData(tmp_path / "db", resolution=4)
    b = LMDBData(tmp_path / "db", resolution=4)
    assert float(a[2]["target"].max()) == float(b[2]["target"].max()) == 2.0
