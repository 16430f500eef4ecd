"""The leaderboard (inversebench/leaderboard.py) over fake run folders laid out as main.py writes
them: two problems, three algorithms, two compat modes, a second exp_name, an unfinished folder.
Table contents against each summary.json, best marking by each metric's direction, the Markdown,
LaTeX and CSV outputs (CSV read back exactly; LaTeX well-formed, compiled where a TeX engine
exists), and the figures."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread

from inversebench.leaderboard import (
    build_tables,
    collect_runs,
    direction,
    fmt_value,
    main,
    to_csv,
    to_latex,
    to_markdown,
)

torch.set_num_threads(1)

PROBLEMS = {
    "inv-scatter-small": {
        "model": "inverse_problems.inverse_scatter.InverseScatter",
        "evaluator": "eval.InverseScatter",
        "metrics": ["psnr", "ssim"],
        "shape": (1, 32, 32),
    },
    "navier-stokes-small": {
        "model": "inverse_problems.navier_stokes.ForwardNavierStokes2d",
        "evaluator": "eval.NavierStokes2d",
        "metrics": ["relative_l2"],
        "shape": (1, 32, 32),
    },
}
ALGORITHMS = ("fista_tv", "dps", "daps")
# (problem, algorithm, compat) -> per-metric quality factor: item values are base * factor
QUALITY = {"fista_tv": 1.0, "dps": 1.2, "daps": 0.9}


def make_run(
    root, problem, algorithm, compat, exp_name="default", ids=(0, 1, 2), shift=0.0, target=True
):
    """A finished run folder: config.yaml, metrics.csv (with the reference's duplicate key for
    Navier-Stokes), summary.json (mean and std over the rows, as utils.results.summarize) and
    a small result_<id>.pt per item."""
    spec = PROBLEMS[problem]
    folder = root / problem / algorithm / exp_name
    folder.mkdir(parents=True)
    q = QUALITY[algorithm] + shift
    rows = []
    for i in ids:
        row = {"id": i}
        for m in spec["metrics"]:
            row[m] = {"psnr": 25.0 * q, "ssim": 0.7 * q, "relative_l2": 0.1 / q}[m] + 0.01 * i
        if problem == "navier-stokes-small":
            row["relative l2"] = row["relative_l2"]  # a reference key (FWI's): not a column
        row["nonfinite"] = 0.0
        nfe = 0.0 if algorithm == "fista_tv" else 100.0 * q  # a baseline: no network
        row.update(nfe=nfe, op_forward=0.0, op_gradient=100.0 * q, op_linear=0.0)
        row.update(seconds=2.0 * q + i, peak_mb=500.0)
        rows.append(row)
    cols = list(rows[0])
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    summary = {"num_items": len(rows), "compat": compat, "fingerprint": "0" * 16}
    for k in cols[1:]:
        vals = np.array([r[k] for r in rows])
        summary[k], summary[f"{k}_std"] = float(vals.mean()), float(vals.std())
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {
        "compat": compat,
        "num_samples": 1,
        "exp_name": exp_name,
        "problem": {
            "name": problem,
            "model": {"_target_": spec["model"], "Lx": 0.18, "Ly": 0.18},
            "evaluator": {"_target_": spec["evaluator"], "compat": compat},
        },
        "algorithm": {"name": algorithm},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    g = torch.Generator().manual_seed(len(ids))
    for i in ids:
        truth = torch.rand(1, *spec["shape"], generator=g)
        recon = truth + 0.1 * torch.randn(1, *spec["shape"], generator=g)
        record = {"recon": recon, "target": truth, "observation": torch.zeros(3)}
        if not target:  # measured data: no truth
            del record["target"]
        torch.save(record, folder / f"result_{i}.pt")
    return folder, summary


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "inference"
    summaries = {}
    for problem in PROBLEMS:
        for algorithm in ALGORITHMS:
            for compat in ("reference", "corrected"):
                exp = "default" if compat == "corrected" else "ref"
                shift = 0.0 if compat == "corrected" else -0.05
                summaries[problem, algorithm, compat, exp] = make_run(
                    root, problem, algorithm, compat, exp, shift=shift
                )[1]
    # dps again under another exp_name (other settings), better than every row on inv-scatter
    summaries["inv-scatter-small", "dps", "corrected", "long"] = make_run(
        root, "inv-scatter-small", "dps", "corrected", "long", shift=0.3
    )[1]
    unfinished = root / "inv-scatter-small" / "dpg" / "default"
    unfinished.mkdir(parents=True)
    torch.save({"recon": torch.zeros(1)}, unfinished / "result_0.pt")
    return root, summaries


def test_directions():
    for m in ("psnr", "psnr_mean", "ssim", "blur_psnr_10", "blur_psnr_20_mean"):
        assert direction(m) == 1, m
    for m in ("relative_l2", "data_misfit", "sw", "mode_tv", "mean_rel_err", "std_rel_err",
              "mean_err_std", "chi2_cp", "chi2_logcamp_mean", "nonfinite"):  # fmt: skip
        assert direction(m) == -1, m
    assert direction("data_fitting_loss") is None and direction("something_new") is None


def test_tables_group_rows_and_mark_the_best(results):
    root, summaries = results
    runs, skipped = collect_runs(root)
    assert len(runs) == 13
    assert [p.name for p, _ in skipped] == ["default"] and "no summary.json" in skipped[0][1]
    tables = build_tables(runs)
    assert [(t.problem, t.compat) for t in tables] == [
        ("inv-scatter-small", "corrected"), ("inv-scatter-small", "reference"),
        ("navier-stokes-small", "corrected"), ("navier-stokes-small", "reference"),
    ]  # fmt: skip
    scatter = tables[0]
    assert [r.label for r in scatter.rows] == ["fista_tv", "daps", "dps", "dps [long]"]
    assert scatter.metrics == ["psnr", "ssim"]  # nonfinite (all 0) left out
    assert scatter.compute == ["nfe", "op_forward", "op_gradient", "seconds", "peak_mb"]
    assert scatter.best == {"psnr": {3}, "ssim": {3}}  # dps [long]: highest is best
    ns = tables[2]
    assert ns.metrics == ["relative_l2"]  # the reference's "relative l2" is not a column
    assert [r.label for r in ns.rows] == ["fista_tv", "daps", "dps"]  # baselines first
    assert ns.best == {"relative_l2": {2}}  # dps: lowest is best
    for t in tables:
        for r in t.rows:
            expected = summaries[t.problem, r.algorithm, t.compat, r.exp_name]
            assert r.summary == expected and r.num_items == 3 and r.compat == t.compat


def test_markdown_values_and_notes(results):
    root, summaries = results
    tables = build_tables(collect_runs(root)[0])
    md = to_markdown(tables)
    s = summaries["navier-stokes-small", "dps", "reference", "ref"]
    assert "## navier-stokes-small (compat=reference): 3 items, 1 sample per item" in md
    cell = f"**{fmt_value(s['relative_l2'])} ({fmt_value(s['relative_l2_std'])})**"
    assert f"| dps [ref] | 3 | 1 | {cell} |" in md
    assert "relative_l2 ↓" in md and "psnr ↑" in md and "relative l2" not in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| fista_tv |")]
    assert len(lines) == 2  # the corrected tables; the reference runs are "fista_tv [ref]"
    # bold exactly once per ranked column per table: 4 tables, 2 + 2 + 1 + 1 columns
    assert md.count("**") // 2 == 6


def test_csv_round_trip(results):
    root, summaries = results
    tables = build_tables(collect_runs(root)[0])
    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    assert len(rows) == 13
    for row in rows:
        s = summaries[row["problem"], row["algorithm"], row["compat"], row["exp_name"]]
        for key in ("psnr", "psnr_std", "ssim", "relative_l2", "relative_l2_std", "seconds",
                    "nfe", "peak_mb"):  # fmt: skip
            if row[key] != "":
                assert float(row[key]) == s[key], key  # exact: written with repr
            else:
                assert key not in s
        assert int(row["num_items"]) == s["num_items"]
    best = {(r["problem"], r["compat"], r["algorithm"], r["exp_name"]): r["best"] for r in rows}
    assert best["inv-scatter-small", "corrected", "dps", "long"] == "psnr;ssim"
    assert best["inv-scatter-small", "reference", "dps", "ref"] == "psnr;ssim"
    assert best["navier-stokes-small", "corrected", "fista_tv", "default"] == ""


def test_latex_is_well_formed(results, tmp_path):
    root, _ = results
    tables = build_tables(collect_runs(root)[0])
    tex = to_latex(tables)
    body = re.sub(r"\\[{}_&%$#]", "", tex)  # escaped characters do not count
    assert body.count("{") == body.count("}")
    for env in ("document", "table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}")
    assert tex.count(r"\begin{table}") == 4
    for block in tex.split(r"\begin{tabular}")[1:]:
        spec = re.match(r"\{(l r*)\}".replace(" ", ""), block).group(1)
        rows = block.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        head = block.split(r"\toprule")[1].split(r"\midrule")[0]
        for line in [head.strip(), *rows]:
            assert len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1, line
    assert r"navier-stokes-small (compat=reference): 3 items" in tex
    assert r"\textbf{" in tex and r"dps [long]" in tex and r"relative\_l2 $\downarrow$" in tex
    engine = shutil.which("pdflatex")
    if engine:
        (tmp_path / "t.tex").write_text(tex)
        proc = subprocess.run(
            [engine, "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_write_leaderboard_files_and_figures(results, tmp_path, capsys):
    root, _ = results
    out = tmp_path / "board"
    main([str(root), "--out", str(out), "--grid-items", "2"])
    printed = capsys.readouterr().out
    assert "# Leaderboard" in printed and "written:" in printed
    names = sorted(p.name for p in out.iterdir())
    keys = ["inv-scatter-small_corrected", "inv-scatter-small_reference",
            "navier-stokes-small_corrected", "navier-stokes-small_reference"]  # fmt: skip
    expected = [f"{k}_{kind}.png" for k in keys for kind in ("compute", "grid")]
    assert names == sorted([*expected, "leaderboard.csv", "leaderboard.md", "leaderboard.tex"])
    # grid: 2 items x (target + 4 rows) on inverse scattering: wider than tall
    h, w = imread(out / "inv-scatter-small_corrected_grid.png").shape[:2]
    assert w > 1.8 * h and h > 300
    _, w3 = imread(out / "navier-stokes-small_corrected_grid.png").shape[:2]
    assert w3 < w  # one row fewer
    h, w = imread(out / "inv-scatter-small_corrected_compute.png").shape[:2]
    assert (h, w) == (462, 1100)  # 10 x 4.2 inches at save_figure's 110 dpi


def test_real_runs_of_inverse_scatter_small(config_factory, tmp_path):
    """Two tiny real runs (main.run: FISTA-TV in both compat modes, two items): the tables hold
    their summary.json values, and the grid and per-item figures draw from their results."""
    from inversebench.leaderboard import write_leaderboard
    from inversebench.leaderboard_figures import item_figures
    from main import run

    root = tmp_path / "exps"
    summaries = {}
    for compat in ("corrected", "reference"):
        cfg = config_factory(
            ["problem=inv-scatter-small", "algorithm=fista_tv", f"compat={compat}",
             f"exp_name={compat}", "problem.data.id_list=0-1", "algorithm.method.num_iters=20",
             f"figures={compat == 'corrected'}"],
            root / "inv-scatter-small",
        )  # fmt: skip
        summaries[compat] = run(cfg)
    written = write_leaderboard(root, tmp_path / "board", grid_items=2)
    rows = list(csv.DictReader(open(written["leaderboard.csv"])))
    assert sorted(r["compat"] for r in rows) == ["corrected", "reference"]
    for r in rows:
        assert r["algorithm"] == "fista_tv" and r["exp_name"] == r["compat"]
        assert r["num_items"] == "2" and r["num_samples"] == "1"
        for key in ("psnr", "ssim", "psnr_std", "seconds"):
            assert float(r[key]) == pytest.approx(summaries[r["compat"]][key], rel=1e-12)
    assert "inv-scatter-small_reference_grid.png" in written
    # main.py drew the corrected run's figures itself; the leaderboard fills in the other run's
    made = root / "inv-scatter-small" / "fista_tv" / "corrected" / "figures"
    assert sorted(p.name for p in made.glob("*.png")) == ["item_0.png", "item_1.png"]
    paths = item_figures(root)
    assert sorted(p.name for p in paths) == ["item_0.png", "item_1.png"]
    assert all("reference" in str(p) for p in paths)


def test_grid_without_targets(tmp_path):
    """Runs on measured data (results without ``target``): the grid has no target column."""
    from inversebench.leaderboard_figures import grid_figure

    root = tmp_path / "inference"
    for algorithm in ("dps", "daps"):
        make_run(root, "inv-scatter-small", algorithm, "corrected", target=False)
    (table,) = build_tables(collect_runs(root)[0])
    fig = grid_figure(table, 2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["daps", "dps"]
