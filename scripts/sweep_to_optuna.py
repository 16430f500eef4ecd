"""A wandb sweep file as an offline Optuna search through Hydra (no wandb server needed).

    python scripts/sweep_to_optuna.py configs/sweep/gmm/dps.yaml --trials 20 [--small] [--run]

prints (or, with ``--run``, runs) the equivalent ``python main.py -m`` command line: the sweep's
fixed overrides, ``hydra/sweeper=optuna`` (the hydra-optuna-sweeper plugin) with the same search
space, direction and metric (``objective=<metric>``, which main() returns), TPE for ``bayes`` and
random sampling for ``random``. Each trial writes to its own folder, named from its sampled values.
``--small`` swaps a paper problem for its CPU-size config. Distributions: ``min``/``max``
(uniform; integers when both bounds are), ``distribution: log_uniform_values`` (log-uniform) and
``values`` (categorical); others are refused with a clear message.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "inv-scatter": ("inv-scatter-small", "inv-scatter-small"),
    "multi-coil-mri-knee": ("multi-coil-mri-small", "mri-small"),
    "blackhole": ("blackhole-small", "blackhole-small"),
    "fwi": ("fwi-small", "fwi-small"),
    "navier-stokes": ("navier-stokes-small", "navier-stokes-small"),
}
SAMPLERS = {"bayes": "tpe", "random": "random"}


def _number(v):
    return float(v) if isinstance(v, str) else v  # YAML 1.1 reads "1e-3" as a string


def search_space(parameters: dict) -> dict[str, str]:
    """``{key: Hydra sweeper expression}`` from a wandb ``parameters`` block."""
    out = {}
    for key, space in parameters.items():
        if "values" in space:
            out[key] = "choice(" + ",".join(str(v) for v in space["values"]) + ")"
        elif "value" in space:
            out[key] = f"choice({space['value']})"
        elif "min" in space and "max" in space:
            lo, hi = sorted((_number(space["min"]), _number(space["max"])))
            dist = space.get("distribution", "uniform")
            ints = all(isinstance(space[k], int) for k in ("min", "max"))
            if dist in ("uniform", "int_uniform"):
                expr = f"interval({lo},{hi})"
            elif dist == "log_uniform_values":
                expr = f"tag(log,interval({lo},{hi}))"
            else:
                raise ValueError(f"{key}: distribution {dist!r} has no Optuna equivalent here")
            out[key] = f"int({expr})" if ints or dist == "int_uniform" else expr
        else:
            raise ValueError(f"{key}: no values, value or min/max in {space}")
    return out


def optuna_command(sweep: Path, trials: int, small: bool = False) -> list[str]:
    spec = yaml.safe_load(Path(sweep).read_text())
    fixed = [
        str(c)
        for c in spec["command"]
        if "=" in str(c) and not str(c).startswith("${") and not str(c).startswith("wandb=")
    ]
    if small:
        problem = next(o.split("=", 1)[1] for o in fixed if o.startswith("problem="))
        if problem not in SMALL:
            raise ValueError(f"{problem} has no small config; drop --small")
        swap = dict(zip(("problem", "pretrain"), SMALL[problem], strict=True))
        fixed = [f"{k}={swap[k]}" if (k := o.split("=", 1)[0]) in swap else o for o in fixed]
    metric = spec["metric"]
    method = spec.get("method", "bayes")
    if method not in SAMPLERS:
        raise ValueError(f"sweep method {method!r}: use bayes or random (grid: a Hydra multirun)")
    params = [f"{k}={v}" for k, v in search_space(spec["parameters"]).items()]
    return [
        sys.executable, str(ROOT / "main.py"), "-m", *fixed,
        "hydra/sweeper=optuna", f"hydra/sweeper/sampler={SAMPLERS[method]}",
        f"hydra.sweeper.direction={metric['goal']}", f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.n_jobs=1", f"objective={metric['name']}", *params,
    ]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="use the problem's small config")
    parser.add_argument("--run", action="store_true", help="run it instead of printing it")
    args, extra = parser.parse_known_args(argv)  # the rest: overrides, e.g. hydra.sweep.dir=...
    bad = [e for e in extra if "=" not in e]
    if bad:
        parser.error(f"not overrides (key=value): {bad}")
    cmd = optuna_command(args.sweep, args.trials, args.small) + extra
    if not args.run:
        print(shlex.join(cmd))
        return 0
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
