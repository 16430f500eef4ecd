"""inversebench as a library: run experiments from Python, from any folder.

    from inversebench import run
    result = run("problem=inv-scatter-small", "algorithm=dps", "problem.data.id_list=0-1")
    result.summary["psnr"], result.rows[0], result.exp_dir

``run`` takes the same ``key=value`` overrides as ``python main.py`` (Hydra syntax), composes the
project's configs (shipped with the package), runs load -> simulate -> solve -> evaluate -> log,
and returns the per-item rows of ``metrics.csv`` and the summary. Results go to
``<problem.exp_dir>/...`` relative to the working directory, as with ``main.py``. The modules keep
InverseBench's top-level names (``main``, ``eval``, ``algo``, ``inverse_problems``, ...), so
code written for the reference's layout imports as it did.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RunResult", "compose_config", "run"]
__version__ = "0.2.0"


@dataclass
class RunResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)
    exp_dir: Path | None = None
    config: object = None


def compose_config(*overrides: str, config_name: str = "config"):
    """The run configuration ``main.py`` would get for these overrides."""
    from hydra import compose, initialize_config_dir

    from utils.paths import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def run(*overrides: str) -> RunResult:
    """One experiment (see the module docstring); ``overrides`` as on main.py's command line."""
    import main

    config = compose_config(*overrides)
    exp_dir = main.experiment_dir(config)
    summary = main.run(config)
    rows = []
    if (exp_dir / "metrics.csv").is_file():
        with open(exp_dir / "metrics.csv") as f:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return RunResult(summary=summary, rows=rows, exp_dir=exp_dir, config=config)


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
