"""scripts/small_benchmark.py: the command set of the small benchmark (dry run) and one tiny real
run (a problem x 2 methods, 1 item, few steps) that ends in a leaderboard."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import small_benchmark as sb  # noqa: E402


def _by_problem(cmds):
    out = {}
    for cmd in cmds:
        args = dict(a.split("=", 1) for a in cmd[3:] if "=" in a)
        out.setdefault(args["problem"], []).append(args)
    return out


def test_dry_run_commands(capsys):
    assert sb.main(["--dry-run", "--root", "res", "--launcher", "local"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cmds = [shlex.split(line) for line in lines]
    *runs, board = cmds
    assert board[1:] == [str(ROOT / "scripts" / "leaderboard.py"), "res"]
    per = _by_problem(runs)
    assert set(per) == set(sb.SMALL_PROBLEMS)  # one multirun per problem
    for problem, (args,) in per.items():
        tuned = {p.stem for p in (ROOT / "configs" / "tuned" / problem).glob("*.yaml")}
        assert set(args["algorithm"].split(",")) == tuned | set(sb.BASELINES[problem])
        assert args["pretrain"] == problem
        assert args["exp_name"] == sb.DEFAULT_EXP_NAME
        assert args["problem.exp_dir"] == f"res/{problem}"  # distinct folders per problem
        assert args["hydra/launcher"] == "local"
        if problem in sb.TEST_ITEMS:  # a cut for the costly problems
            assert args["problem.data.id_list"] == f"'{sb.TEST_ITEMS[problem]}'"
        else:
            assert "problem.data.id_list" not in args  # the problem's own test items
    assert all(cmd[2] == "-m" and cmd[1].endswith("main.py") for cmd in runs)
    assert {"daps", "dps", "fista_tv", "reddiff"} <= set(
        per["inv-scatter-small"][0]["algorithm"].split(",")
    )


def test_items_and_per_method_overrides():
    sets = sb.parse_sets(["dps:algorithm.method.guidance_scale=1"])
    cmds = sb.commands(["inv-scatter-small"], "r", items="0,2", sets=sets, only=["dps", "daps"])
    per = _by_problem(cmds)["inv-scatter-small"]
    assert sorted(a["algorithm"] for a in per) == ["daps", "dps"]  # dps has its own multirun
    for args in per:
        assert args["problem.data.id_list"] == "'0,2'"  # quoted: Hydra must not sweep over it
        assert ("algorithm.method.guidance_scale" in args) == (args["algorithm"] == "dps")
    assert len({a["hydra.sweep.dir"] for a in per}) == 2


def test_bad_input():
    with pytest.raises(SystemExit, match="not small problems"):
        sb.main(["--dry-run", "--problems", "inv-scatter"])
    with pytest.raises(SystemExit, match="ALG:KEY=VALUE"):
        sb.parse_sets(["guidance_scale=1"])
    with pytest.raises(SystemExit, match="not in the benchmark"):
        sb.commands(["inv-scatter-small"], "r", only=["nope"])


def test_tiny_real_run(tmp_path):
    """inv-scatter-small x {fista_tv, dps} on item 0 with 10 iterations / 10 steps: both runs
    finish into their own folders and the leaderboard lists both (about 25 s on 1 thread)."""
    root = tmp_path / "res"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "small_benchmark.py"),
        "--problems=inv-scatter-small",
        "--methods=fista_tv,dps",
        f"--root={root}",
        "--items=0",
        "--exp-name=pytest-small-benchmark",
        "--set=fista_tv:algorithm.method.num_iters=10",
        "--set=dps:algorithm.method.diffusion_scheduler_config.num_steps=10",
        "--no-figures",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in ("fista_tv", "dps"):
        assert (
            root / "inv-scatter-small" / method / "pytest-small-benchmark" / "summary.json"
        ).is_file()
    board = (root / "leaderboard" / "leaderboard.md").read_text()
    assert "fista_tv [pytest-small-benchmark]" in board
    assert "dps [pytest-small-benchmark]" in board
    assert "inv-scatter-small: 2 runs" in proc.stdout  # the recorded solve time per problem


def test_applicability_follows_capabilities():
    """A method applies where the operator offers what its class requires: the SVD methods only on
    inverse scattering, the gradient methods everywhere but nowhere without a gradient, the
    derivative-free ones everywhere."""
    scatter = set(sb.coverage("inv-scatter-small")["applicable"])
    assert scatter == set(sb.DIFFUSION_METHODS)
    for problem in ("blackhole-small", "multi-coil-mri-small", "fwi-small", "navier-stokes-small"):
        got = set(sb.coverage(problem)["applicable"])
        assert not got & {"ddrm", "ddnm", "pigdm", "fps", "mcgdiff", "ddsmc"}, problem
        assert {"dps", "daps", "enkg", "dpg", "scg"} <= got, problem
    assert sb.requirements("pigdm") == {"linear", "svd"}  # the default noisy mode


def test_every_applicable_pair_is_tuned():
    """The benchmark's promise: each applicable (small problem, diffusion method) pair runs with
    settings tuned for it (configs/tuned/<problem>/<method>.yaml), or is excluded with a reason."""
    for problem in sb.SMALL_PROBLEMS:
        assert sb.coverage(problem)["missing"] == [], problem
    for (problem, method), reason in sb.EXCLUDED.items():
        assert method in sb.coverage(problem)["applicable"] and len(reason) > 20, (problem, method)
