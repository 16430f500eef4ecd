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

from utils.helper import select_ids

DATA_SOURCE = (
    "InverseBench's test/validation data come from its CaltechData record (see the reference "
    "README); the scripts/ folder generates synthetic data in the same format"
)


_OPEN: dict = {}  # (pid, path) -> environment: LMDB allows one handle per environment and process


def open_readonly(path):
    """A read-only LMDB environment, shared by every reader of ``path`` in this process. A file
    shorter than its own page table says (a truncated copy) is refused here: reading it would end
    the process with SIGBUS."""
    import lmdb

    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _OPEN:
        data = Path(key[1]) / "data.mdb"
        try:
            env = lmdb.open(key[1], readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as err:
            raise ValueError(
                f"{data} is not a readable LMDB file ({err}); copy or regenerate the dataset"
            ) from None
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = data.stat().st_size
        if size < needed:
            env.close()
            raise ValueError(
                f"{data} is truncated: {size} bytes, but its pages need {needed}; copy or "
                "regenerate the dataset"
            )
        _OPEN[key] = env
    return _OPEN[key]


def checked_ids(ids: list[int], limit: int = 2000) -> list[int]:
    """The ids opened at set-up: all of a test set; the first and last 16 of a large training set
    (reading every item of 50k images would take minutes)."""
    return list(ids) if len(ids) <= limit else [*ids[:16], *ids[-16:]]


def check_items(source, ids, read, expected_bytes: int | None, dtype, fix: str = "") -> None:
    """Open every selected item once at set-up: present, of the expected size, finite. Errors
    name the file, the key and the fix (a NaN in the data is the data's fault, not the
    algorithm's)."""
    for i in ids:
        buf = read(i)
        if buf is None:
            raise KeyError(f"{source} has no key {str(i)!r} (item {i}); check id_list")
        if expected_bytes is not None and len(buf) != expected_bytes:
            raise ValueError(
                f"{source} key {str(i)!r} holds {len(buf)} bytes, but {expected_bytes} are "
                "expected from the configured resolution and dtype; "
                + (fix or "set the dataset's resolution to the data's, or regenerate the data")
            )
        values = np.frombuffer(buf, dtype=dtype)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ValueError(
                f"{source} key {str(i)!r} (item {i}) holds {bad} NaN or infinite values: the "
                "data are broken; fix or drop that item (id_list)"
            )


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
        self.id_list = select_ids(id_list, n, self.root / "data.mdb")
        per_item = self.dtype.itemsize * self.raw_resolution**2
        with self._open().begin() as txn:
            read = lambda i: txn.get(str(i).encode())  # noqa: E731
            check_items(self.root / "data.mdb", checked_ids(self.id_list), read, None, self.dtype)
            sizes = {len(read(i) or b"") for i in checked_ids(self.id_list)}
        if any(s % per_item for s in sizes):
            raise ValueError(
                f"{self.root / 'data.mdb'} items hold {sorted(sizes)} bytes, not a multiple of "
                f"raw_resolution^2 x {self.dtype.itemsize} = {per_item}: set "
                "(raw_)resolution to the data's, or regenerate the data at this resolution"
            )

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
