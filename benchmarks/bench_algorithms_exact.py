"""Every algorithm against the exact posterior: Gaussian mixture (d, d_y) and Gaussian random field;
with --ns, the Navier–Stokes problems (relative L2); with --scatter, inverse scattering (PSNR,
SSIM).

    python benchmarks/bench_algorithms_exact.py                      # all algorithms, all settings
    python benchmarks/bench_algorithms_exact.py --algorithms dps ddrm --gmm 8:1 8:4 --no-grf
    python benchmarks/bench_algorithms_exact.py --items 4 --samples 200 -- algorithm.method.x=1
    python benchmarks/bench_algorithms_exact.py --gmm --no-grf --ns navier-stokes-grf \
        navier-stokes-small --algorithms enkg eki dpg scg dps_gsg --items 3 --samples 1
    python benchmarks/bench_algorithms_exact.py --gmm --no-grf --scatter inv-scatter-small \
        --items 5 --samples 1 --batch 5
    python benchmarks/bench_algorithms_exact.py --derivative-free   # gmm 8:4 and grf, see below

Each (problem, algorithm) runs through main.py's pipeline (so results resume: a rerun only
computes what is missing; pass --out to keep runs apart) with the algorithm's defaults plus
``configs/tuned/<problem>/<algorithm>.yaml``. An algorithm whose needs the operator does not meet
is listed as n/a. Prints one Markdown table per problem: the metrics (mean ± std over items),
network evaluations and operator calls per sample, and seconds per item.

``--derivative-free`` checks the derivative-free and ensemble methods (default: enkg, eki, dpg,
scg, dps_gsg, with uncond as the prior's reference row; gmm d=8 d_y=4 and grf; 200 samples) with
the operator as a black box (``black_box=true``: a gradient request raises, so a method that asks
fails the run), and reports sliced W1, the mean's error in posterior spreads
(||mean - exact|| / ||exact std||) and the std's relative error, plus forward calls per item.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from main import run  # noqa: E402

METRICS = {
    "gmm": ("sw", "mode_tv"),
    "grf": ("mean_rel_err", "std_rel_err", "sw"),
    "ns": ("relative_l2",),
    "scatter": ("psnr", "ssim"),
}
PRIOR = {"navier-stokes-grf": "grf", "navier-stokes-small": "navier-stokes-small"}
COUNTS = ("nfe", "op_forward", "op_gradient", "op_linear")
DERIVATIVE_FREE = ["uncond", "enkg", "eki", "dpg", "scg", "dps_gsg"]
DF_METRICS = {
    "gmm": ("sw", "mean_err_std", "std_rel_err", "mode_tv"),
    "grf": ("sw", "mean_err_std", "std_rel_err"),
}


def all_algorithms() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "algorithm").glob("*.yaml"))


def settings(gmm: list[str], grf: bool, ns: list[str], scatter: list[str]):
    for spec in gmm:
        d, dy = (int(v) for v in spec.split(":"))
        yield (
            f"gmm d={d} d_y={dy}",
            "gmm",
            ["problem=gmm", "pretrain=gmm", f"problem.dim={d}", f"problem.dim_y={dy}"],
            f"d{d}_dy{dy}",
        )
    if grf:
        yield "grf 32x32, 64 pixels", "grf", ["problem=grf", "pretrain=grf"], "grf"
    for name in ns:
        yield name, "ns", [f"problem={name}", f"pretrain={PRIOR.get(name, name)}"], name
    for name in scatter:
        yield name, "scatter", [f"problem={name}", f"pretrain={name}"], name


def run_one(problem_overrides, algo, tag, kind, args) -> dict | str:
    items = (
        f"problem.data.id_list=0-{args.items - 1}"
        if kind in ("ns", "scatter")
        else f"problem.data.num_items={args.items}"
    )
    overrides = [
        *problem_overrides,
        f"algorithm={algo}",
        f"exp_name=bench_{tag}",
        f"problem.exp_dir={args.out}/{tag}",
        items,
        f"num_samples={args.samples}",
        f"batch_size={args.batch}",
        "progress=false",
        *args.overrides,
    ]
    if args.derivative_free:
        metrics = ",".join(DF_METRICS.get(kind, METRICS[kind]))
        overrides += ["black_box=true", f"problem.evaluator.metrics=[{metrics}]"]
    cfg = compose("config", overrides=overrides)
    try:
        return run(cfg)
    except ValueError as err:
        if "needs operator capabilities" in str(err):
            return "n/a (" + str(err).split("capabilities ", 1)[1].split("]", 1)[0] + "])"
        raise


def fmt(summary: dict, key: str) -> str:
    return f"{summary[key]:.3f} ± {summary.get(key + '_std', 0.0):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", nargs="+", default=None, help="default: all configs")
    p.add_argument("--gmm", nargs="*", default=None, help="d:d_y settings (default: all six)")
    p.add_argument("--no-grf", action="store_true")
    p.add_argument("--ns", nargs="*", default=[], help="Navier-Stokes problems to add")
    p.add_argument("--scatter", nargs="*", default=[], help="inverse-scattering problems to add")
    p.add_argument("--items", type=int, default=5)
    p.add_argument("--samples", type=int, default=None, help="500 (derivative-free: 200)")
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--out", default=None, help="exps/bench/exact (or .../derivative_free)")
    p.add_argument(
        "--derivative-free",
        action="store_true",
        help="black-box operator, derivative-free algorithms, gmm 8:4 and grf (see above)",
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args()
    df = args.derivative_free
    if args.gmm is None:
        args.gmm = ["8:4"] if df else ["8:1", "8:2", "8:4", "80:1", "80:2", "80:4"]
    args.samples = args.samples or (200 if df else 500)
    args.out = args.out or ("exps/bench/derivative_free" if df else "exps/bench/exact")
    metrics = DF_METRICS if df else METRICS
    algorithms = args.algorithms or (DERIVATIVE_FREE if df else all_algorithms())
    tables = []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for title, kind, problem_overrides, tag in settings(
            args.gmm, not args.no_grf, args.ns, args.scatter
        ):
            rows = []
            for algo in algorithms:
                print(f"{title}: {algo}", flush=True)
                rows.append((algo, run_one(problem_overrides, algo, tag, kind, args)))
            tables.append((title, kind, rows))
    print(f"\n{args.items} items x {args.samples} samples; counts per sample, seconds per item")
    for title, kind, rows in tables:
        cols = [*metrics[kind], *COUNTS, "forward / item", "s / item", "forward / s"]
        print(f"\n### {title}\n\n| algorithm | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for algo, s in rows:
            if isinstance(s, str):
                print(f"| {algo} | {s} |" + " |" * (len(cols) - 1))
                continue
            n = args.samples
            cells = [fmt(s, k) for k in metrics[kind]]
            cells += [f"{s.get(k, 0.0) / n:.0f}" for k in COUNTS]
            cells.append(f"{s.get('op_forward', 0.0):.0f}")
            cells.append(f"{s['seconds']:.2f}")
            cells.append(f"{s.get('op_forward', 0.0) / max(s['seconds'], 1e-9):.0f}")
            print(f"| {algo} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
