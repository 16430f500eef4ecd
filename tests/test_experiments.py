"""Experiment folders as contracts (utils/experiment.py) and many runs: stale results, replaced
checkpoints, concurrent runs, shards, sweep trials and multiruns."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from main import parse_shard, run
from utils.experiment import ExperimentFolder, FolderBusy, StaleResults, fingerprint
from utils.results import result_fingerprint

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "problem=gmm",
    "pretrain=gmm",
    "algorithm.method.diffusion_scheduler_config.num_steps=20",
    "num_samples=16",
    "problem.evaluator.num_reference=1000",
    "problem.evaluator.num_projections=32",
]


def _recon(exp, i):
    return torch.load(exp / f"result_{i}.pt", weights_only=True)["recon"]


def _rows(exp):
    return {r["id"]: r for r in csv.DictReader(open(exp / "metrics.csv"))}


def test_overwrite_of_a_subset_leaves_no_stale_item_behind(config_factory, tmp_path):
    """guidance 1 on items 0-3; guidance 5 with overwrite on items 0-1 deletes items 2-3 (made
    with guidance 1); a plain rerun on 0-3 recomputes them: every result is guidance 5's."""
    exp = tmp_path / "dps" / "default"
    run(config_factory([*FAST, "problem.data.id_list=0-3", "algorithm.method.guidance_scale=1"]))
    five = [*FAST, "algorithm.method.guidance_scale=5"]
    run(config_factory([*five, "problem.data.id_list=0-1", "overwrite=true"]))
    assert sorted(p.name for p in exp.glob("result_*.pt")) == ["result_0.pt", "result_1.pt"]
    summary = run(config_factory([*five, "problem.data.id_list=0-3"]))
    clean = run(config_factory([*five, "problem.data.id_list=0-3"], tmp_path / "clean"))
    assert summary["sw"] == pytest.approx(clean["sw"], rel=1e-6)
    fps = {result_fingerprint(exp / f"result_{i}.pt") for i in range(4)}
    assert len(fps) == 1 and json.loads((exp / "experiment.json").read_text())["fingerprint"] in fps


def test_results_of_other_settings_are_refused_naming_them(config_factory, tmp_path):
    exp = tmp_path / "dps" / "default"
    run(config_factory([*FAST, "problem.data.id_list=0-1"]))
    (exp / "config.yaml").unlink()  # the folder's record gone: the results still say who made them
    with pytest.raises(StaleResults, match=r"other settings: result_\{0, 1\}"):
        run(
            config_factory([*FAST, "problem.data.id_list=0-1", "algorithm.method.guidance_scale=3"])
        )


def test_a_replaced_checkpoint_changes_the_fingerprint(tmp_path):
    ckpt = tmp_path / "prior.pt"
    torch.save({"ema": {"w": torch.zeros(3)}}, ckpt)
    before = fingerprint({"a": 1}, ckpt)
    assert fingerprint({"a": 1}, ckpt) == before
    torch.save({"ema": {"w": torch.ones(3)}}, ckpt)  # same path, other weights
    assert fingerprint({"a": 1}, ckpt) != before
    assert fingerprint({"a": 2}, ckpt) != fingerprint({"a": 1}, ckpt)


def test_a_running_experiment_keeps_runs_of_other_settings_out(config_factory, tmp_path):
    """While a run of some settings holds the folder, a run of other settings is refused before
    it writes anything; a run of the same settings (a shard) may join; once the first has ended
    (or was killed: the kernel drops its locks), the folder can be taken over with overwrite."""
    exp = tmp_path / "dps" / "default"
    run(config_factory([*FAST, "problem.data.id_list=0"]))
    fp = json.loads((exp / "experiment.json").read_text())["fingerprint"]
    other = [*FAST, "problem.data.id_list=0", "algorithm.method.guidance_scale=3", "overwrite=true"]
    with ExperimentFolder(exp, fp):  # the first run, still writing
        before = {p.name: p.stat().st_mtime_ns for p in exp.iterdir()}
        with pytest.raises(FolderBusy, match="in use by a running experiment"):
            run(config_factory(other))
        after = {p.name: p.stat().st_mtime_ns for p in exp.iterdir() if p.name != "log.txt"}
        assert after == {k: v for k, v in before.items() if k != "log.txt"}
        run(config_factory([*FAST, "problem.data.id_list=0-1"]))  # same settings: joins
    run(config_factory(other))  # the first run has ended
    assert result_fingerprint(exp / "result_0.pt") != fp


def test_shards_into_one_folder_equal_the_unsharded_run(config_factory, tmp_path):
    """shard=1/2 and 2/2 solve items 0, 2 and 1, 3; the last to finish writes metrics.csv and
    summary.json over all items, equal to one unsharded run."""
    exp = tmp_path / "dps" / "default"
    base = [*FAST, "problem.data.id_list=0-3"]
    run(config_factory([*base, "shard=2/2"]))
    assert sorted(p.name for p in exp.glob("result_*.pt")) == ["result_1.pt", "result_3.pt"]
    assert not (exp / "summary.json").exists()  # shard 1 still to come
    merged = run(config_factory([*base, "shard=1/2"]))
    single = run(config_factory(base, tmp_path / "single"))
    assert json.loads((exp / "summary.json").read_text())["num_items"] == 4
    assert merged["sw"] == pytest.approx(single["sw"], rel=1e-6)
    for i in range(4):
        torch.testing.assert_close(_recon(exp, i), _recon(tmp_path / "single/dps/default", i))
    assert list(_rows(exp)) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "2"])
def test_bad_shards_are_refused(bad):
    with pytest.raises(ValueError, match="k/n"):
        parse_shard(bad)


def test_results_are_group_readable(config_factory, tmp_path):
    old = os.umask(0o022)
    try:
        run(config_factory([*FAST, "problem.data.id_list=0"]))
    finally:
        os.umask(old)
    for name in ("result_0.pt", "metrics.csv", "summary.json", "config.yaml"):
        assert (tmp_path / "dps" / "default" / name).stat().st_mode & 0o777 == 0o644


def _main(args, cwd, env=None):
    cmd = [sys.executable, str(ROOT / "main.py"), *args, "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_sweep_trials_get_folders_of_their_own(tmp_path):
    """A Hydra multirun over a hyperparameter (three trials) writes three folders, named from the
    trials' overrides; wandb sweep agents' trials are named from the run id."""
    _main(
        ["-m", *FAST, f"problem.exp_dir={tmp_path}", "problem.data.id_list=0",
         "algorithm.method.guidance_scale=1,2,3", f"hydra.sweep.dir={tmp_path}/multirun"],
        tmp_path,
    )  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "dps").iterdir())
    assert len(names) == 3 and all("algorithm.method.guidance_scale=" in n for n in names)
    for name in names:
        assert (tmp_path / "dps" / name / "summary.json").is_file()
    # a named sweep: one folder per trial under the name
    _main(
        ["-m", *FAST, f"problem.exp_dir={tmp_path}", "problem.data.id_list=0", "exp_name=tuning",
         "algorithm.method.guidance_scale=1,2", f"hydra.sweep.dir={tmp_path}/multirun2"],
        tmp_path,
    )  # fmt: skip
    named = sorted(p.name for p in (tmp_path / "dps" / "tuning").iterdir())
    assert named == ["algorithm.method.guidance_scale=1", "algorithm.method.guidance_scale=2"]


def test_wandb_sweep_trials_are_named_from_the_run(config_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    for run_id, g in (("r1", 1), ("r2", 2)):
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        run(
            config_factory(
                [*FAST, "problem.data.id_list=0", f"algorithm.method.guidance_scale={g}"]
            )
        )
    assert sorted(p.name for p in (tmp_path / "dps").iterdir()) == ["sweep-r1", "sweep-r2"]


def test_multirun_over_algorithms(tmp_path):
    """main.py -m algorithm=a,b runs each pair with its tuned settings into its own folder."""
    _main(
        ["-m", "problem=gmm", "pretrain=gmm", "algorithm=dps,uncond", "num_samples=8",
         "problem.data.id_list=0", "problem.evaluator.num_reference=500",
         "problem.evaluator.num_projections=16", f"problem.exp_dir={tmp_path}",
         f"hydra.sweep.dir={tmp_path}/multirun"],
        tmp_path,
    )  # fmt: skip
    for algo in ("dps", "uncond"):
        assert (tmp_path / algo / "default" / "summary.json").is_file()


def test_a_grid_runs_in_parallel_with_the_local_launcher(tmp_path):
    """main.py -m hydra/launcher=local (joblib, 2 processes): problem x 2 algorithms."""
    _main(
        ["-m", "hydra/launcher=local", "problem=gmm", "pretrain=gmm", "algorithm=dps,uncond",
         "num_samples=8", "problem.data.id_list=0", "problem.evaluator.num_reference=500",
         "problem.evaluator.num_projections=16", f"problem.exp_dir={tmp_path}",
         f"hydra.sweep.dir={tmp_path}/multirun"],
        tmp_path,
    )  # fmt: skip
    for algo in ("dps", "uncond"):
        assert (tmp_path / algo / "default" / "summary.json").is_file()


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    import socket

    from utils.io import remove_dead_temporaries

    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    files = {
        "dead": tmp_path / f".result_3.pt.{host}-{dead}.abc123.tmp",
        "alive": tmp_path / f".result_4.pt.{host}-{os.getpid()}.def456.tmp",
        "elsewhere": tmp_path / f".result_5.pt.otherhost-{dead}.ghi789.tmp",
    }
    for f in files.values():
        f.write_bytes(b"partial")
    assert remove_dead_temporaries(tmp_path) == [files["dead"]]
    assert files["alive"].exists() and files["elsewhere"].exists()
