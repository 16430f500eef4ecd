"""Regenerate the parity fixtures under ``tests/fixtures/reference/`` from a checkout of the
reference, InverseBench (github devzhk/InverseBench, commit b113d67).

    python scripts/make_reference_fixtures.py --reference /path/to/InverseBench [--only fwi ...]

Each generator in ``scripts/reference_fixtures/<name>.py`` runs in its own process with the
reference checkout as working directory and first on ``sys.path`` (its module names --
``inverse_problems``, ``eval``, ``algo``, ``utils`` -- clash with this project's, so none of
this project's modules is imported there). A generator feeds seeded inputs to the reference's own
code and writes the inputs and the reference's outputs, as plain arrays, to
``tests/fixtures/reference/<name>*.npz``; only those numbers enter this repository. The parity
tests (``tests/test_parity_*.py``) feed the same inputs to this project's code in
``compat=reference`` and compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ROOT / "scripts" / "reference_fixtures"
OUT = ROOT / "tests" / "fixtures" / "reference"
REFERENCE_COMMIT = "b113d67"


def generators() -> dict[str, Path]:
    return {p.stem: p for p in sorted(GENERATORS.glob("*.py")) if not p.stem.startswith("_")}


def main(argv=None) -> int:
    known = generators()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="InverseBench checkout")
    parser.add_argument("--only", nargs="*", choices=sorted(known), help="generators to run")
    parser.add_argument("--out", type=Path, default=OUT, help="fixture folder")
    args = parser.parse_args(argv)
    ref = args.reference.resolve()
    if not (ref / "inverse_problems").is_dir() or not (ref / "eval.py").is_file():
        parser.error(f"{ref} is not an InverseBench checkout (no inverse_problems/ or eval.py)")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ref), "OMP_NUM_THREADS": "1"}
    failed = []
    for name in args.only or sorted(known):
        print(f"[{name}] {known[name]}", flush=True)
        cmd = [sys.executable, str(known[name]), "--reference", str(ref), "--out", str(args.out)]
        if subprocess.run(cmd, cwd=ref, env=env).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
