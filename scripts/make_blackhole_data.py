"""Generate GRMHD-like black-hole images in the reference's LMDB format.

    python scripts/make_blackhole_data.py --out data/blackhole-small/test --num 16 --size 32 \
        --seed 1
    python scripts/make_blackhole_data.py --out data/blackhole-small/train --num 8192 --size 32 \
        --seed 0

Key str(idx) -> float64 (1, size, size), maximum 1, on a 160 uas field of view; image idx uses seed
(seed, idx). The image model is described in training/blackhole.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from training.blackhole import generate
from training.dataset import write_lmdb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fov", type=float, default=160.0, help="field of view in uas")
    args = p.parse_args()
    data = generate(args.num, args.size, args.seed, args.fov)
    write_lmdb(args.out, list(data), dtype=np.float64)
    sums = data.reshape(len(data), -1).sum(1)
    print(
        f"wrote {len(data)} images to {args.out}: pixel sum (max-normalized) mean "
        f"{sums.mean():.1f}, min {sums.min():.1f}, max {sums.max():.1f}"
    )


if __name__ == "__main__":
    main()
