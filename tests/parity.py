"""Reading the parity fixtures: the reference's own outputs on seeded inputs, made by
scripts/make_reference_fixtures.py from a checkout of InverseBench (b113d67)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"


def load_fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``tests/fixtures/reference/<name>.npz``."""
    path = FIXTURES / f"{name}.npz"
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    return meta, arrays


def rel_err(ours, theirs) -> float:
    """||ours - theirs|| / ||theirs|| (complex-aware, float64)."""
    a = np.asarray(ours, dtype=np.complex128 if np.iscomplexobj(ours) else np.float64)
    b = np.asarray(theirs, dtype=a.dtype if np.iscomplexobj(theirs) else np.float64)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-300))
