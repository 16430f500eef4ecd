"""The small benchmark in one command: every tuned (small problem, method) pair on its test items,
then the leaderboard.

    python scripts/small_benchmark.py [--problems inv-scatter-small,fwi-small] [--root DIR]
                                      [--launcher local] [--items 0-1] [--exp-name NAME]
                                      [--methods dps,fista_tv]
                                      [--set ALG:KEY=VALUE ...] [--dry-run] [--no-figures]

For each small problem (the CPU-size configs; ``--problems`` picks some) the methods are those with
a tuned file ``configs/tuned/<problem>/<method>.yaml`` (main.py loads it by itself, the
``optional tuned`` entry of configs/config.yaml) plus the problem's prior-free baselines
(``BASELINES``), which run at their config defaults where no tuned file exists. Each problem is ONE
Hydra multirun::

    main.py -m problem=P pretrain=P algorithm=a,b,c exp_name=small-benchmark problem.exp_dir=ROOT/P

(``hydra/launcher=local`` with ``--launcher local``: the joblib launcher, 2 jobs; pin
OMP_NUM_THREADS), so every run lands in its own folder ``ROOT/P/<method>/small-benchmark/``, and
a finished run is resumed, not redone (main.py's default). ``--items`` overrides the test items
(``TEST_ITEMS``, else the problem's ``id_list``; e.g. ``0`` for a quick pass).
``--set ALG:KEY=VALUE`` adds an override for one method only (e.g.
``dps:algorithm.method.diffusion_scheduler_config.num_steps=20``); methods with such overrides run
in a multirun of their own, since Hydra applies a multirun's overrides to every job.
Last, the leaderboard (inversebench.leaderboard) over ROOT: ``ROOT/leaderboard/``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the algorithm and operator classes (for --check)

#: the CPU-size problems (each has a prior of the same name in configs/pretrain)
SMALL_PROBLEMS = (
    "inv-scatter-small",
    "blackhole-small",
    "multi-coil-mri-small",
    "navier-stokes-small",
    "fwi-small",
)
#: each problem's prior-free baselines (the paper's classical methods), run with or without tuning
BASELINES = {
    "inv-scatter-small": ("fista_tv",),
    "blackhole-small": ("ehtim_rml",),
    "multi-coil-mri-small": ("cs_mri",),
    "navier-stokes-small": ("eki",),
    "fwi-small": ("adam", "lbfgs"),
}
DEFAULT_EXP_NAME = "small-benchmark"
#: test items where the problem's own id_list (0-9) costs too much on a CPU: the FWI and
#: Navier-Stokes methods take 15-90 s per item each (one core), so these run the first five
TEST_ITEMS = {"fwi-small": "0-4", "navier-stokes-small": "0-4"}
#: the diffusion-prior solvers compared: the paper's 14 (DDRM, DDNM, PiGDM, DPS, LGD, DPG, SCG,
#: EnKG, DiffPIR, PnP-DM, DAPS, RED-diff, FPS, MCG-diff) and the reference's later DDSMC and DPS-GSG
DIFFUSION_METHODS = (
    "ddrm", "ddnm", "pigdm", "dps", "lgd", "dpg", "scg", "enkg", "diffpir", "pnpdm", "daps",
    "reddiff", "fps", "mcgdiff", "ddsmc", "dps_gsg",
)  # fmt: skip
#: applicable (problem, method) pairs left out on purpose, each with its measured reason
EXCLUDED: dict[tuple[str, str], str] = {}


def _target_class(target: str):
    module, _, name = str(target).rpartition(".")
    return getattr(importlib.import_module(module), name)


def capabilities(problem: str, config_dir: Path = ROOT / "configs") -> frozenset[str]:
    """What the problem's operator offers (its class's ``capabilities_for`` the model config)."""
    model = OmegaConf.load(config_dir / "problem" / f"{problem}.yaml").model
    return frozenset(_target_class(model._target_).capabilities_for(model))


def requirements(method: str, config_dir: Path = ROOT / "configs") -> frozenset[str]:
    """What the method's default mode needs from an operator (its class's ``requires``)."""
    target = OmegaConf.load(config_dir / "algorithm" / f"{method}.yaml").method._target_
    return frozenset(_target_class(target).requires)


def coverage(problem: str, config_dir: Path = ROOT / "configs") -> dict[str, list[str]]:
    """The problem's diffusion methods: ``applicable`` (the operator offers what they need),
    ``tuned`` (a file in configs/tuned/<problem>/), ``excluded`` (EXCLUDED) and ``missing``
    (applicable, neither tuned nor excluded: the benchmark would run them untuned)."""
    caps = capabilities(problem, config_dir)
    applicable = [m for m in DIFFUSION_METHODS if requirements(m, config_dir) <= caps]
    tuned = {p.stem for p in (config_dir / "tuned" / problem).glob("*.yaml")}
    excluded = [m for m in applicable if (problem, m) in EXCLUDED]
    missing = [m for m in applicable if m not in tuned and m not in excluded]
    return {
        "applicable": applicable,
        "tuned": sorted(tuned),
        "excluded": excluded,
        "missing": missing,
    }


def check(problems: list[str], config_dir: Path = ROOT / "configs") -> int:
    """Print which diffusion methods apply to each problem and which are tuned; 1 if any
    applicable method is neither tuned nor excluded."""
    bad = 0
    for problem in problems:
        c = coverage(problem, config_dir)
        print(f"{problem}: operator offers {sorted(capabilities(problem, config_dir))}")
        print(f"  applicable ({len(c['applicable'])}): {', '.join(c['applicable'])}")
        for m in c["excluded"]:
            print(f"  excluded {m}: {EXCLUDED[(problem, m)]}")
        if c["missing"]:
            bad = 1
            print(f"  NOT TUNED: {', '.join(c['missing'])}")
    return bad


def recorded_seconds(root: Path) -> dict[str, tuple[int, float]]:
    """Per problem under ``root``: (runs, solve seconds the runs recorded: s/item x items)."""
    from inversebench.leaderboard import collect_runs

    out: dict[str, tuple[int, float]] = {}
    for run in collect_runs(root)[0]:
        n, total = out.get(run.problem, (0, 0.0))
        out[run.problem] = (n + 1, total + float(run.summary.get("seconds", 0.0)) * run.num_items)
    return out


def methods(problem: str, config_dir: Path = ROOT / "configs") -> list[str]:
    """The methods of ``problem``'s small benchmark: its tuned files' names plus its baselines,
    sorted; refuses a problem without a config or a method without an algorithm config."""
    if not (config_dir / "problem" / f"{problem}.yaml").is_file():
        raise SystemExit(f"unknown problem {problem!r}: no configs/problem/{problem}.yaml")
    tuned = {p.stem for p in (config_dir / "tuned" / problem).glob("*.yaml")}
    names = sorted(tuned | set(BASELINES.get(problem, ())))
    missing = [m for m in names if not (config_dir / "algorithm" / f"{m}.yaml").is_file()]
    if missing:
        raise SystemExit(f"{problem}: no configs/algorithm/<name>.yaml for {missing}")
    return names


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """``['dps:a.b=1', ...]`` -> ``{'dps': ['a.b=1'], ...}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        alg, sep, override = item.partition(":")
        if not sep or not alg or "=" not in override:
            raise SystemExit(f"--set {item!r} is not ALG:KEY=VALUE")
        out.setdefault(alg, []).append(override)
    return out


def commands(
    problems: list[str],
    root: str,
    exp_name: str = DEFAULT_EXP_NAME,
    items: str | None = None,
    launcher: str | None = None,
    sets: dict[str, list[str]] | None = None,
    only: list[str] | None = None,
    python: str = sys.executable,
) -> list[list[str]]:
    """The main.py multiruns: one per problem (more only where ``sets`` gives a method its own
    overrides); ``only`` keeps just those methods (a problem left with none is skipped)."""
    sets = sets or {}
    every = {name for problem in problems for name in methods(problem)}
    unknown = (set(sets) | set(only or ())) - every
    if unknown:
        raise SystemExit(f"--set/--methods name methods not in the benchmark: {sorted(unknown)}")
    out = []
    for problem in problems:
        names = [m for m in methods(problem) if only is None or m in only]
        common = [
            f"problem={problem}",
            f"pretrain={problem}",
            f"exp_name={exp_name}",
            f"problem.exp_dir={Path(root) / problem}",
            # Hydra's record of the multirun (multirun.yaml): one per invocation, never overwritten
            f"hydra.sweep.dir=multirun/{exp_name}/{problem}/${{now:%Y-%m-%d_%H-%M-%S}}",
        ]
        ids = items if items is not None else TEST_ITEMS.get(problem)
        if ids is not None:
            common.append(f"problem.data.id_list='{ids}'")  # quoted: a comma is no sweep
        if launcher is not None:
            common.append(f"hydra/launcher={launcher}")
        groups: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            groups.setdefault(tuple(sets.get(name, ())), []).append(name)
        for extra, group in groups.items():
            cmd = [python, str(ROOT / "main.py"), "-m", f"algorithm={','.join(group)}"]
            cmd += common + list(extra)
            if len(groups) > 1:  # distinct multirun records per group
                cmd = [
                    c if not c.startswith("hydra.sweep.dir=") else f"{c}/{'+'.join(group)}"
                    for c in cmd
                ]
            out.append(cmd)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--problems", default=",".join(SMALL_PROBLEMS), help="comma-separated")
    p.add_argument(
        "--root", default="exps/small-benchmark", help="results root (relative: to the repo)"
    )
    p.add_argument("--exp-name", default=DEFAULT_EXP_NAME, help="every run's exp_name")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    p.add_argument("--items", default=None, help="id_list override (e.g. 0 or 0-1)")
    p.add_argument("--launcher", default=None, help="hydra/launcher (e.g. local)")
    p.add_argument("--set", action="append", default=[], metavar="ALG:KEY=VALUE")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--check",
        action="store_true",
        help="list applicable / tuned methods per problem, run nothing",
    )
    p.add_argument("--no-figures", action="store_true", help="leaderboard tables only")
    args = p.parse_args(argv)
    problems = [s.strip() for s in args.problems.split(",") if s.strip()]
    unknown = [q for q in problems if q not in SMALL_PROBLEMS]
    if unknown:
        raise SystemExit(f"not small problems: {unknown} (choose from {list(SMALL_PROBLEMS)})")
    if args.check:
        return check(problems)
    only = None if args.methods is None else [m.strip() for m in args.methods.split(",")]
    cmds = commands(
        problems, args.root, args.exp_name, args.items, args.launcher, parse_sets(args.set), only
    )
    board = [sys.executable, str(ROOT / "scripts" / "leaderboard.py"), args.root]
    if args.no_figures:
        board.append("--no-figures")
    if args.dry_run:
        for cmd in [*cmds, board]:
            print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    failed = []
    for cmd in cmds:
        print("+", shlex.join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            failed.append(cmd)
    print(f"benchmark runs: {time.perf_counter() - start:.1f} s wall", flush=True)
    rc = subprocess.run(board, cwd=ROOT, env=env).returncode
    root = Path(args.root) if Path(args.root).is_absolute() else ROOT / args.root
    for problem, (n, total) in sorted(recorded_seconds(root).items()):
        print(f"{problem}: {n} runs, {total:.0f} s of solving recorded (s/item x items)")
    if failed:
        print(
            f"{len(failed)} multirun(s) failed:",
            *map(shlex.join, failed),
            sep="\n",
            file=sys.stderr,
        )
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
