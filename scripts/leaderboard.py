"""The leaderboard command: every finished run under a results root as tables and figures.

    python scripts/leaderboard.py [exps/inference] [--out DIR] [--metrics psnr,ssim]
                                  [--figure-metric psnr] [--grid-items 4] [--no-figures]
                                  [--item-figures]

Writes leaderboard.md, leaderboard.tex, leaderboard.csv and per (problem, compat) a
compute-vs-quality and a grid figure (inversebench/leaderboard.py says what each holds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inversebench.leaderboard import main

if __name__ == "__main__":
    main()
