"""Generate synthetic multi-coil MRI scans in the reference's three-environment LMDB layout.

    python scripts/make_mri_data.py --out data/multi-coil-mri-small/test --num 10 --size 64 \
        --coils 6 --seed 1
    python scripts/make_mri_data.py --out data/multi-coil-mri-small/train --num 4096 --size 64 \
        --seed 0 --mvue-only          # prior training needs the images only
    python scripts/make_mri_data.py --out /tmp/mri-espirit --num 10 --maps espirit
                                      # maps estimated by ESPIRiT, as real pipelines

Writes <out>/{mvue,s_maps,kspace} (key str(idx), raw complex64 (1, H, W) / (Nc, H, W)); scan idx
uses seed (seed, idx). The scan model (knee-like cross-sections, birdcage coil maps, k-space
noise) is described in training/mri.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.mri import generate, write_mri_lmdb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.01, help="k-space noise / RMS of k-space")
    p.add_argument(
        "--maps",
        choices=("true", "espirit"),
        default="true",
        help="coil maps: the true ones, or estimated from the k-space by ESPIRiT (as real data)",
    )
    p.add_argument("--mvue-only", action="store_true", help="write only the mvue environment")
    args = p.parse_args()
    coils = 1 if args.mvue_only else args.coils
    scans = generate(args.num, args.size, coils, args.seed, args.noise, args.maps)
    write_mri_lmdb(args.out, scans, envs=("mvue",) if args.mvue_only else None)
    mags = np.abs(np.stack([s["mvue"] for s in scans]))
    print(f"wrote {len(scans)} scans to {args.out}: |mvue| mean {mags.mean():.3f}, ", end="")
    print(f"max {mags.max():.3f}")


if __name__ == "__main__":
    main()
