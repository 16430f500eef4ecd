"""Generate OpenFWI CurveFault-like velocity maps in the reference's LMDB format.

    python scripts/make_fwi_data.py --out data/fwi-small/test --num 16 --seed 1
    python scripts/make_fwi_data.py --out data/fwi-small/train --num 20000 --seed 0

Key str(idx) -> raw float32 (1, size, size) velocity in m/s (OpenFWI's 70 x 70 by default, as
InverseBench's fwi-test / fwi-train; ``LMDBData(raw_resolution=70, mean=3000, std=500)`` resizes
and normalizes it to v[km/s] - 3). Map idx uses seed (seed, idx). The map model is described in
training/fwi.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.dataset import write_lmdb
from training.fwi import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--size", type=int, default=70)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    data = generate(args.num, args.size, args.seed)
    write_lmdb(args.out, list(data))
    print(
        f"wrote {len(data)} maps to {args.out} in {time.perf_counter() - start:.1f} s: "
        f"velocity mean {data.mean():.0f} m/s, std {data.std():.0f}, "
        f"min {data.min():.0f}, max {data.max():.0f}"
    )


if __name__ == "__main__":
    main()
