"""The project installs as a package: a wheel carries the modules, configs, small datasets and
priors, and runs from any folder through the Python API and the console entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_runs_from_another_folder(tmp_path):
    wheel_dir, site, work = tmp_path / "wheel", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheel_dir), str(ROOT)], check=True)
    (wheel,) = wheel_dir.glob("inversebench-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    code = (
        "import main, inversebench\n"
        f"assert main.__file__.startswith({str(site)!r}), main.__file__\n"
        "r = inversebench.run('problem=inv-scatter-small', 'algorithm=fista_tv',"
        " 'problem.data.id_list=0', 'progress=false')\n"
        "assert r.rows[0]['id'] == 0 and r.summary['psnr'] > 20, r.summary\n"
        "print(r.exp_dir)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "exps/inference/inv-scatter-small/fista_tv/default/summary.json").is_file()
    script = site / "bin" / "inversebench-run"
    out = subprocess.run(
        [sys.executable, str(script), "problem=gmm", "algorithm=uncond", "num_samples=8",
         "problem.data.id_list=0", "problem.evaluator.num_reference=200", "progress=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "exps/inference/gmm/uncond/default/summary.json").is_file()
