"""Where the project's shipped files are: configs, small datasets and small priors.

In a checkout (or an editable install) they sit at the repository root; in an installed wheel
they are package data of ``inversebench``. ``asset(rel)`` is the OmegaConf resolver
``${asset:data/...}`` used by the problem configs: a path that exists relative to the working
directory is kept as written (your own copy wins, and results keep their short paths); otherwise
the shipped file is used, so a run works from any folder (a notebook, another project).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> Path:
    """The folder holding ``configs/``, ``data/`` and ``checkpoints/``."""
    top = Path(__file__).resolve().parents[1]  # the checkout, or site-packages
    if (top / "configs" / "config.yaml").is_file():
        return top
    return top / "inversebench"  # an installed wheel: package data of inversebench


CONFIG_DIR = project_root() / "configs"


def asset(rel: str) -> str:
    path = Path(rel)
    if path.is_absolute() or path.exists():
        return str(rel)
    shipped = project_root() / path
    return str(shipped) if shipped.exists() else str(rel)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset)
