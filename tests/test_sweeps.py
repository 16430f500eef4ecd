"""The reference's wandb sweep files (configs/sweep/<problem>/<algorithm>.yaml, its 47 unchanged,
plus this project's) compose: their command lines and sampled values form a valid run config,
against the paper configs they name and against the small configs of the same problems, and every
swept or set ``algorithm.method`` key is an argument of the algorithm's class."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONFIGS

SWEEPS = sorted((Path(CONFIGS) / "sweep").glob("*/*.yaml"))
SMALL = {  # paper problem -> (small problem, its prior)
    "inv-scatter": ("inv-scatter-small", "inv-scatter-small"),
    "multi-coil-mri-knee": ("multi-coil-mri-small", "mri-small"),
    "blackhole": ("blackhole-small", "blackhole-small"),
    "fwi": ("fwi-small", "fwi-small"),
    "navier-stokes": ("navier-stokes-small", "navier-stokes-small"),
}


def sweep_overrides(path: Path) -> list[str]:
    """The sweep's command-line overrides plus one sampled value per parameter."""
    spec = yaml.safe_load(path.read_text())
    out = [c for c in spec["command"] if "=" in str(c) and not str(c).startswith("${")]
    for key, space in spec.get("parameters", {}).items():
        if "values" in space:
            value = space["values"][0]
        elif "value" in space:
            value = space["value"]
        else:  # YAML 1.1 reads "1e-3" as a string; wandb reads it as a number
            value = min(float(space["min"]), float(space["max"]))
            if all(isinstance(space[k], int) for k in ("min", "max")):
                value = int(value)
        out.append(f"{key}={value}")
    return out


def to_small(overrides: list[str]) -> list[str] | None:
    problem = next(o.split("=", 1)[1] for o in overrides if o.startswith("problem="))
    if problem not in SMALL:
        return None
    small, prior = SMALL[problem]
    swap = {"problem": small, "pretrain": prior}
    return [f"{k}={swap[k]}" if (k := o.split("=", 1)[0]) in swap else o for o in overrides]


def compose_and_check(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    module, _, name = cfg.algorithm.method._target_.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    method_keys = {
        o.split("=", 1)[0].split(".")[2] for o in overrides if o.startswith("algorithm.method.")
    }
    unknown = sorted(k for k in method_keys if k not in params and not takes_any)
    assert not unknown, f"{cls.__name__} takes no {unknown}"
    return cfg


def test_the_reference_sweep_files_are_all_here():
    reference = [p for p in SWEEPS if p.parent.name not in ("gmm", "grf")]
    assert len(reference) == 47


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sweep_composes_against_the_paper_config(path):
    compose_and_check(sweep_overrides(path))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sweep_composes_against_the_small_config(path):
    small = to_small(sweep_overrides(path))
    if small is None:
        pytest.skip("an exact problem: it has no paper-size config")
    compose_and_check(small)
