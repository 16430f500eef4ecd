"""Sliced Wasserstein of algorithms on the Gaussian-mixture test for several d_y, as a table.

    python scripts/gmm_table.py [--dim 8] [--dim-y 1 2 4] [--algorithms uncond dps] [-- overrides]

Runs main.py's pipeline for each (d_y, algorithm) (resuming finished runs) and prints the mean
and standard deviation over the test items of each metric from summary.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from main import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--dim-y", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--algorithms", nargs="+", default=["uncond", "dps"])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for dy in args.dim_y:
            for algo in args.algorithms:
                cfg = compose(
                    "config",
                    overrides=[
                        "problem=gmm",
                        "pretrain=gmm",
                        f"algorithm={algo}",
                        f"problem.dim={args.dim}",
                        f"problem.dim_y={dy}",
                        f"exp_name=d{args.dim}_dy{dy}",
                        "progress=false",
                        *args.overrides,
                    ],
                )
                s = run(cfg)
                rows.append((dy, algo, s))
    print(f"\nGaussian mixture, d = {args.dim}: mean ± std over test items")
    print("| d_y | algorithm | sliced W1 | mode mass TV | s / item |")
    print("|---|---|---|---|---|")
    for dy, algo, s in rows:
        print(
            f"| {dy} | {algo} | {s['sw']:.3f} ± {s['sw_std']:.3f} | "
            f"{s['mode_tv']:.3f} ± {s['mode_tv_std']:.3f} | {s['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
