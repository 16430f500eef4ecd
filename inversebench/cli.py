"""Console entry points: ``inversebench-run`` (main.py), ``inversebench-train`` (train.py)."""

from __future__ import annotations


def run_main() -> None:
    import main

    main.main()


def train_main() -> None:
    import train

    train.main()
