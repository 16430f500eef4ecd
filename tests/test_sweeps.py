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


def test_wandb_spaces_become_hydra_sweeper_expressions():
    from scripts.sweep_to_optuna import search_space

    space = search_space(
        {
            "a": {"distribution": "log_uniform_values", "min": "1e-3", "max": 100.0},
            "b": {"min": 20, "max": 200},
            "c": {"values": [1000, 2000]},
            "d": {"min": 0.9, "max": 0.95},
        }
    )
    assert space == {
        "a": "tag(log,interval(0.001,100.0))",
        "b": "int(interval(20,200))",
        "c": "choice(1000,2000)",
        "d": "interval(0.9,0.95)",
    }
    with pytest.raises(ValueError, match="no Optuna equivalent"):
        search_space({"e": {"distribution": "q_normal", "min": 0, "max": 1}})


def test_an_offline_optuna_sweep_runs_its_trials_into_their_own_folders(tmp_path):
    """The gmm/dps sweep file through Hydra's Optuna sweeper: 3 trials, 3 folders, a best value."""
    import os
    import subprocess
    import sys

    root = Path(CONFIGS).parent
    cmd = [
        sys.executable, str(root / "scripts" / "sweep_to_optuna.py"),
        str(root / "configs/sweep/gmm/dps.yaml"), "--trials", "3", "--run",
        f"problem.exp_dir={tmp_path}/exps", f"hydra.sweep.dir={tmp_path}/sweep",
        "algorithm.method.diffusion_scheduler_config.num_steps=10", "num_samples=8",
        "problem.data.id_list=0", "problem.evaluator.num_reference=500", "progress=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "exps" / "dps").iterdir())) == 3
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] > 0 and "algorithm.method.guidance_scale" in best["best_params"]
