"""Shared by the fixture generators (run inside a reference checkout; see
scripts/make_reference_fixtures.py). Imports nothing of this project."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np


def parse_args(doc: str):
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--reference", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    return parser.parse_args()


def reference_commit(ref: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ref), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown (not a git checkout)"
    except OSError:
        return "unknown"


def save(path: Path, ref: Path, meta: dict, **arrays) -> None:
    """Arrays plus a JSON ``meta`` entry (generator settings, the reference's commit)."""
    meta = {"reference_commit": reference_commit(ref), **meta}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez_compressed(path, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    size = Path(path).stat().st_size
    print(f"wrote {path} ({size / 1024:.0f} KiB, {len(arrays)} arrays)", flush=True)
