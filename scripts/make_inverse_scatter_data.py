"""Generate HL60-nucleus-like permittivity phantoms in the reference's LMDB format.

    python scripts/make_inverse_scatter_data.py --out data/inv-scatter-small/train \
        --num 4096 --resolution 32 --seed 0

Stored as key str(idx) -> float32 (1, H, W) with values in [0, 1] (the reference's
``inv-scatter-*`` layout; ``LMDBData(mean=0.5, std=0.25)`` maps them to [-1, 1]). Phantom idx uses
seed (seed, idx), so any subset can be regenerated alone. The phantom model is described in
training/phantoms.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.dataset import write_lmdb
from training.phantoms import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--supersample", type=int, default=None, help="default: up to 64 pixels, then pooled"
    )
    p.add_argument("--min-cells", type=int, default=1)
    p.add_argument("--max-cells", type=int, default=6)
    args = p.parse_args()
    ss = args.supersample or max(1, 64 // args.resolution)
    data = generate(
        args.num,
        args.resolution,
        args.seed,
        supersample=ss,
        min_cells=args.min_cells,
        max_cells=args.max_cells,
    )
    write_lmdb(args.out, list(data))
    print(
        f"wrote {len(data)} phantoms to {args.out}: min {data.min():.3f}, max {data.max():.3f}, "
        f"mean {data.mean():.3f}, std {data.std():.3f}"
    )


if __name__ == "__main__":
    main()
