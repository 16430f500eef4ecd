"""Datasets in the reference's on-disk formats (prior draws for toy training: training/exact.py).

``LMDBData``: one LMDB environment; key ``str(idx)`` -> raw float32 bytes of shape
(C, raw_resolution, raw_resolution); the length is the number of entries. Items are
``{'target': (C, resolution, resolution) float32}``, normalized as (x - mean) / (2 std) and
resized with antialiasing when the raw resolution differs (InverseBench's FWI data: 70 -> 128).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from utils.helper import parse_int_list

DATA_SOURCE = (
    "InverseBench's test/validation data come from its CaltechData record (see the reference "
    "README); the scripts/ folder generates synthetic data in the same format"
)


_OPEN: dict = {}  # (pid, path) -> environment: LMDB allows one handle per environment and process


def open_readonly(path):
    """A read-only LMDB environment, shared by every reader of ``path`` in this process."""
    import lmdb

    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _OPEN:
        _OPEN[key] = lmdb.open(key[1], readonly=True, lock=False, readahead=False, meminit=False)
    return _OPEN[key]


def write_lmdb(root, arrays, dtype=np.float32) -> None:
    """Write arrays as an LMDB env in the reference layout (key str(i) -> raw bytes)."""
    import lmdb

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(np.asarray(a, dtype=dtype).nbytes for a in arrays)
    env = lmdb.open(str(root), map_size=max(2 * total, 1 << 20) + (1 << 20))
    with env.begin(write=True) as txn:
        for i, a in enumerate(arrays):
            txn.put(str(i).encode(), np.ascontiguousarray(a, dtype=dtype).tobytes())
    env.close()


class LMDBData(Dataset):
    def __init__(
        self,
        root,
        resolution: int = 128,
        raw_resolution: int | None = None,
        mean: float = 0.0,
        std: float = 0.5,
        id_list=None,
        dtype: str = "float32",
    ):
        self.root = Path(root)
        if not (self.root / "data.mdb").is_file():
            raise FileNotFoundError(
                f"no LMDB dataset at {self.root} (expected {self.root / 'data.mdb'}). "
                f"{DATA_SOURCE}. Point problem.data.root (or data.root) at it."
            )
        self.resolution = int(resolution)
        self.raw_resolution = int(raw_resolution or resolution)
        self.mean, self.std = float(mean), float(std)
        self.dtype = np.dtype(dtype)
        self._env = None
        with self._open().begin() as txn:
            n = txn.stat()["entries"]
        self.id_list = parse_int_list(id_list) or list(range(n))
        bad = [i for i in self.id_list if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the {n} entries of {self.root}")

    def _open(self):
        if self._env is None:  # opened lazily so that DataLoader workers get their own handle
            self._env = open_readonly(self.root)
        return self._env

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None
        return state

    def __len__(self) -> int:
        return len(self.id_list)

    def raw(self, index: int) -> np.ndarray:
        with self._open().begin() as txn:
            buf = txn.get(str(self.id_list[index]).encode())
        arr = np.frombuffer(buf, dtype=self.dtype)
        return arr.reshape(-1, self.raw_resolution, self.raw_resolution)

    def __getitem__(self, index: int) -> dict:
        x = torch.from_numpy(self.raw(index).astype(np.float32))
        if self.raw_resolution != self.resolution:
            x = F.interpolate(
                x[None],
                size=(self.resolution, self.resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
        return {"target": (x - self.mean) / (2 * self.std)}
