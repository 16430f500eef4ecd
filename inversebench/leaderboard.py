"""The leaderboard: every run under a results root, as the paper's tables and figures.

    python scripts/leaderboard.py [exps/inference] [--out DIR] [--metrics psnr,ssim] ...

A run is a folder ``<root>/<problem>/<algorithm>/<exp_name>/`` that main.py finished: it holds
``summary.json`` (``num_items``, ``compat``, ``{metric, metric_std}`` over the items),
``metrics.csv`` (one row per item, metric columns in the evaluator's order), ``config.yaml`` and
the items' ``result_<id>.pt``. Folders without ``summary.json`` (running, or shards still to
come) are listed as skipped.

Tables: one per (problem, compat mode) -- the two modes score with different physics and metrics,
so their numbers are never ranked together -- with one row per (algorithm, exp_name) (a run under
another exp_name, e.g. other hyperparameters, is its own row, labelled ``algorithm [exp_name]``);
rows without network evaluations (the baselines) come first, then the others by name, each
algorithm's default exp_name before its others. Columns: the items and samples per item, every
metric as mean (std over the items), then the compute per item (network evaluations, operator
forward and gradient calls, seconds, peak memory in MB). The best mean of each metric column is
marked (bold); which way is better is ``direction``'s rule (PSNR/SSIM up; errors, distances,
misfits and chi^2 down -- the chi^2 columns are already max(chi^2, 1/chi^2), so 1 is best and lower
is better). Compute columns are not marked. A ``<m>_mean`` column (black hole: the mean over an
item's samples beside the best of its samples) is left out where it equals ``<m>`` in every row
(one sample per item); ``nonfinite`` only shows where some run has non-finite samples. The
reference's duplicate metric keys (``reference_names`` of the evaluators in eval.py, e.g.
``relative l2``) are left out: they repeat ours.

Outputs (``write_leaderboard``): ``leaderboard.md``, ``leaderboard.tex`` (a standalone LaTeX
document, booktabs, one table per problem and mode), ``leaderboard.csv`` (one row per run, full
precision, a ``best`` column naming the metrics where the row is best), and per table
``<problem>_<compat>_compute.png`` (a quality metric against seconds and NFE per item, one
point per row, error bars the std over items) and ``<problem>_<compat>_grid.png`` (the same
items across rows: target | row 1 | row 2 | ..., from the saved ``result_<id>.pt``), drawn by
``inversebench.leaderboard_figures``.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from utils.io import atomic_write_text

COMPUTE = ("nfe", "op_forward", "op_gradient", "op_linear", "seconds", "peak_mb")
COMPUTE_NAMES = {
    "nfe": "NFE",
    "op_forward": "fwd",
    "op_gradient": "grad",
    "op_linear": "lin",
    "seconds": "s/item",
    "peak_mb": "peak MB",
}
#: metrics where lower is better (besides every ``chi2*``)
LOWER = {
    "relative_l2", "data_misfit", "sw", "mode_tv", "mean_rel_err", "std_rel_err",
    "mean_err_std", "nonfinite", "mse", "nmse", "rmse", "mae", "lpips",
}  # fmt: skip
#: metric names that start a higher-is-better family (``psnr``, ``psnr_mean``, ``blur_psnr_10``)
HIGHER = ("psnr", "ssim", "blur_psnr")
#: reported, but not comparable between algorithms (each defines its own loss): never marked
UNRANKED = {"data_fitting_loss"}


def direction(metric: str) -> int | None:
    """+1 when a higher value is better, -1 when lower is better, None when unknown (or when the
    metric is not comparable across algorithms)."""
    name = metric.removesuffix("_mean")
    if name in UNRANKED:
        return None
    if name.startswith(HIGHER):
        return 1
    if name in LOWER or name.startswith("chi2"):
        return -1
    return None


@dataclass
class Run:
    """One finished run folder."""

    path: Path
    problem: str
    algorithm: str
    exp_name: str
    compat: str
    num_items: int
    num_samples: int | None
    summary: dict
    metrics: list[str]
    item_ids: list[int]
    problem_config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return (
            self.algorithm if self.exp_name == "default" else f"{self.algorithm} [{self.exp_name}]"
        )

    def value(self, metric: str) -> float | None:
        v = self.summary.get(metric)
        return float(v) if isinstance(v, (int, float)) else None


def _reference_aliases(evaluator_target: str | None) -> set[str]:
    """The reference's duplicate keys: those of the run's evaluator class (``module.Class``)
    and of every evaluator in eval.py (a run may predate a class's current names; no alias is
    one of our metric names)."""
    out = set()
    try:
        module, name = str(evaluator_target).rsplit(".", 1)
        out |= set(getattr(importlib.import_module(module), name).reference_names.values())
    except Exception:  # an old run, or an evaluator since renamed: the known aliases below
        pass
    try:
        from eval import Evaluator
    except Exception:
        return out
    todo = [Evaluator]
    while todo:
        cls = todo.pop()
        out |= set(getattr(cls, "reference_names", {}).values())
        todo.extend(cls.__subclasses__())
    return out


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception:
        return {}


def read_run(folder, root=None) -> Run:
    """A ``Run`` from a finished folder (``summary.json`` required). Problem and algorithm come
    from its ``config.yaml`` (else the folder's place under ``root``); ``exp_name`` is the
    folder's path below ``<root>/<problem>/<algorithm>`` (a sweep trial's own folder name)."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    if not isinstance(summary, dict) or "num_items" not in summary:
        raise ValueError(f"{folder / 'summary.json'} is not a run summary (no num_items)")
    cfg = _read_config(folder / "config.yaml")
    parts = folder.relative_to(root).parts if root is not None else ()
    problem_cfg = cfg.get("problem") or {}
    problem = problem_cfg.get("name") or (
        parts[0] if len(parts) >= 3 else folder.parent.parent.name
    )
    algorithm = (cfg.get("algorithm") or {}).get("name") or (
        parts[1] if len(parts) >= 3 else folder.parent.name
    )
    exp_name = "/".join(parts[2:]) if len(parts) >= 3 else str(cfg.get("exp_name", folder.name))
    aliases = _reference_aliases((problem_cfg.get("evaluator") or {}).get("_target_"))
    header, ids = [], []
    csv_path = folder / "metrics.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            ids = [int(float(row["id"])) for row in reader if row.get("id") not in (None, "")]
    if not header:  # no per-item file: the summary's own order
        header = [k for k in summary if not k.endswith("_std") and f"{k}_std" in summary]
    metrics = [
        k for k in header
        if k != "id" and k not in COMPUTE and k not in aliases and k in summary
    ]  # fmt: skip
    samples = cfg.get("num_samples")
    return Run(
        path=folder,
        problem=str(problem),
        algorithm=str(algorithm),
        exp_name=exp_name,
        compat=str(summary.get("compat", cfg.get("compat", "unknown"))),
        num_items=int(summary["num_items"]),
        num_samples=int(samples) if isinstance(samples, int) else None,
        summary=summary,
        metrics=metrics,
        item_ids=ids,
        problem_config=problem_cfg,
    )


def collect_runs(root) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every finished run under ``root``, and the folders skipped with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"results root {root} is not a folder (main.py writes exps/inference)"
        )
    runs, skipped = [], []
    for summary in sorted(root.rglob("summary.json")):
        try:
            runs.append(read_run(summary.parent, root))
        except Exception as err:  # a damaged folder is reported, not fatal for the others
            skipped.append((summary.parent, f"{type(err).__name__}: {err}"))
    done = {r.path for r in runs} | {p for p, _ in skipped}
    for result in sorted(root.rglob("result_*.pt")):
        if result.parent not in done:
            skipped.append((result.parent, "no summary.json (running, or shards still to come)"))
            done.add(result.parent)
    return runs, skipped


@dataclass
class Table:
    """One problem in one compat mode: ``rows`` (runs), metric and compute columns, and the
    rows holding each metric's best mean."""

    problem: str
    compat: str
    rows: list[Run]
    metrics: list[str]
    compute: list[str]
    best: dict[str, set[int]]

    @property
    def key(self) -> str:
        return f"{self.problem}_{self.compat}"

    def items_note(self) -> str:
        counts = sorted({r.num_items for r in self.rows})
        samples = sorted({r.num_samples for r in self.rows if r.num_samples is not None})
        text = f"{counts[0]} items" if len(counts) == 1 else (
            f"{counts[0]}-{counts[-1]} items (rows differ: not on the same items)"
        )  # fmt: skip
        if len(samples) == 1:
            text += f", {samples[0]} sample{'s' if samples[0] != 1 else ''} per item"
        return text


def best_rows(values: list[float | None], sign: int, rtol: float = 1e-9) -> set[int]:
    """Rows whose value is the best (ties included) by ``sign`` (+1 max, -1 min)."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not finite:
        return set()
    top = max(sign * v for _, v in finite)
    return {i for i, v in finite if sign * v >= top - rtol * max(abs(top), 1e-300)}


def _repeats_base(metric: str, cols: list[str], rows: list[Run]) -> bool:
    """A ``<m>_mean`` column (the mean over an item's samples, beside the evaluator's best-of-
    samples ``<m>``) that equals ``<m>`` in every row: one sample per item."""
    base = metric.removesuffix("_mean")
    return (
        base != metric
        and base in cols
        and all(r.value(metric) == r.value(base) for r in rows)
        and all(r.value(f"{metric}_std") == r.value(f"{base}_std") for r in rows)
    )


def build_tables(runs: Iterable[Run], metrics: list[str] | None = None) -> list[Table]:
    """Group runs per (problem, compat); ``metrics``: the metric columns to keep (default: all,
    but ``nonfinite`` only where some run has non-finite samples and no ``<m>_mean`` that
    repeats ``<m>``)."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.problem, run.compat), []).append(run)
    tables = []
    for (problem, compat), rows in sorted(groups.items()):
        # methods without a network (baselines: FISTA-TV, Adam, ...) first, as the paper's tables
        rows = sorted(
            rows,
            key=lambda r: (
                (r.value("nfe") or 0) > 0,
                r.algorithm,
                r.exp_name != "default",
                r.exp_name,
            ),
        )
        cols: list[str] = []
        for r in rows:
            cols.extend(m for m in r.metrics if m not in cols)
        if metrics is not None:
            cols = [m for m in metrics if m in cols]
        else:
            if all((r.value("nonfinite") or 0.0) == 0.0 for r in rows):
                cols = [m for m in cols if m != "nonfinite"]
            cols = [m for m in cols if not _repeats_base(m, cols, rows)]
        compute = [
            c for c in COMPUTE
            if c != "op_linear" or any((r.value(c) or 0.0) > 0 for r in rows)
        ]  # fmt: skip
        best = {}
        for m in cols:
            sign = direction(m)
            if sign is not None and len(rows) > 1:
                best[m] = best_rows([r.value(m) for r in rows], sign)
        tables.append(Table(problem, compat, rows, cols, compute, best))
    return tables


# -- formatting ------------------------------------------------------------------------------------
def fmt_value(v: float | None) -> str:
    """A table number: 2 decimals from 1 to 100, 1 from 100, none from 1000, else 3 significant
    digits."""
    if v is None:
        return "--"
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return "0" if v == 0 else f"{v:#.3g}"  # 0.990, not 0.99


def fmt_compute(name: str, v: float | None) -> str:
    if v is None:
        return "--"
    if name in ("seconds",):
        return f"{v:.3g}"
    if name == "peak_mb":
        return f"{v:.0f}"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def arrow(metric: str, latex: bool = False) -> str:
    sign = direction(metric)
    if sign is None:
        return ""
    if latex:
        return r" $\uparrow$" if sign > 0 else r" $\downarrow$"
    return " ↑" if sign > 0 else " ↓"


def cell(table: Table, i: int, metric: str) -> tuple[str, bool]:
    run = table.rows[i]
    mean, std = run.value(metric), run.value(f"{metric}_std")
    text = fmt_value(mean) + (f" ({fmt_value(std)})" if std is not None else "")
    return text, i in table.best.get(metric, ())


LEGEND = (
    "mean (std over items); bold: best per metric column (↑ higher is better, ↓ lower; chi2 "
    "columns are max(chi2, 1/chi2): 1 is best); compute per item: NFE network evaluations, "
    "fwd/grad operator forward/gradient calls, lin linear-operator calls, wall seconds, peak "
    "memory (MB); compute columns unmarked"
)


def to_markdown(tables: list[Table], skipped=()) -> str:
    out = ["# Leaderboard", "", LEGEND + ".", ""]
    for t in tables:
        out += [f"## {t.problem} (compat={t.compat}): {t.items_note()}", ""]
        head = ["method", "items", "samples", *(m + arrow(m) for m in t.metrics)]
        head += [COMPUTE_NAMES[c] for c in t.compute]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join([":--"] + ["--:"] * (len(head) - 1)) + "|")
        for i, r in enumerate(t.rows):
            cells = [r.label.replace("|", "\\|"), str(r.num_items), str(r.num_samples or "?")]
            for m in t.metrics:
                text, best = cell(t, i, m)
                cells.append(f"**{text}**" if best else text)
            cells += [fmt_compute(c, r.value(c)) for c in t.compute]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if skipped:
        out += ["Skipped folders:", ""] + [f"- `{p}`: {why}" for p, why in skipped] + [""]
    return "\n".join(out)


def latex_escape(text: str) -> str:
    repl = {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
    }  # fmt: skip
    return "".join(repl.get(ch, ch) for ch in text)


def to_latex(tables: list[Table]) -> str:
    """A standalone document (article, booktabs), one table per problem and mode; copy a
    ``tabular`` into a paper as it is."""
    out = [
        r"\documentclass{article}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\usepackage[margin=1.5cm,landscape]{geometry}",
        r"\begin{document}",
        "",
    ]
    for t in tables:
        ncol = 3 + len(t.metrics) + len(t.compute)
        head = ["Method", "Items", "Samples"]
        head += [latex_escape(m) + arrow(m, latex=True) for m in t.metrics]
        head += [latex_escape(COMPUTE_NAMES[c]) for c in t.compute]
        caption = latex_escape(f"{t.problem} (compat={t.compat}): {t.items_note()}.")
        caption += r" Mean (std over items); bold: best per metric column."
        out += [
            r"\begin{table}[ht]",
            r"\centering",
            rf"\caption{{{caption}}}",
            r"\resizebox{\linewidth}{!}{%",
            r"\begin{tabular}{l" + "r" * (ncol - 1) + "}",
            r"\toprule",
            " & ".join(head) + r" \\",
            r"\midrule",
        ]
        for i, r in enumerate(t.rows):
            cells = [latex_escape(r.label), str(r.num_items), str(r.num_samples or "?")]
            for m in t.metrics:
                text, best = cell(t, i, m)
                text = latex_escape(text)
                cells.append(rf"\textbf{{{text}}}" if best else text)
            cells += [latex_escape(fmt_compute(c, r.value(c))) for c in t.compute]
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


def csv_columns(tables: list[Table]) -> list[str]:
    metrics: list[str] = []
    for t in tables:
        metrics.extend(m for m in t.metrics if m not in metrics)
    cols = ["problem", "compat", "algorithm", "exp_name", "num_items", "num_samples"]
    cols += [x for m in metrics for x in (m, f"{m}_std")]
    cols += [x for c in COMPUTE for x in (c, f"{c}_std")]
    return [*cols, "best", "path"]


def to_csv(tables: list[Table]) -> str:
    """One row per run, every number at full precision (``repr``); ``best``: the metrics
    (';'-separated) where the row holds its table's best mean."""
    cols = csv_columns(tables)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for t in tables:
        for i, r in enumerate(t.rows):
            row = {
                "problem": r.problem, "compat": r.compat, "algorithm": r.algorithm,
                "exp_name": r.exp_name, "num_items": r.num_items,
                "num_samples": "" if r.num_samples is None else r.num_samples,
                "best": ";".join(m for m in t.metrics if i in t.best.get(m, ())),
                "path": str(r.path),
            }  # fmt: skip
            for name in [*t.metrics, *COMPUTE]:
                for key in (name, f"{name}_std"):
                    v = r.value(key)
                    row[key] = "" if v is None else repr(v)
            writer.writerow(row)
    return buf.getvalue()


def write_leaderboard(
    root,
    out=None,
    metrics: list[str] | None = None,
    figure_metric: str | None = None,
    grid_items: int = 4,
    figures: bool = True,
) -> dict[str, Path]:
    """Collect the runs under ``root`` and write the tables (and figures) to ``out`` (default
    ``<root>/leaderboard``); returns the paths written by name."""
    root = Path(root)
    out = Path(out) if out is not None else root / "leaderboard"
    runs, skipped = collect_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"no finished run under {root} (a run folder holds summary.json; "
            f"{len(skipped)} folders without one)"
        )
    tables = build_tables(runs, metrics)
    written = {}
    for name, text in (
        ("leaderboard.md", to_markdown(tables, skipped)),
        ("leaderboard.tex", to_latex(tables)),
        ("leaderboard.csv", to_csv(tables)),
    ):
        atomic_write_text(out / name, text)
        written[name] = out / name
    if figures:
        from inversebench.leaderboard_figures import write_figures

        written.update(write_figures(tables, out, figure_metric, grid_items))
    return written


def main(argv=None) -> None:
    """The leaderboard command (scripts/leaderboard.py)."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default="exps/inference", help="results root")
    p.add_argument("--out", default=None, help="output folder (default: <root>/leaderboard)")
    p.add_argument("--metrics", default=None, help="comma-separated metric columns to keep")
    p.add_argument("--figure-metric", default=None, help="the compute figure's metric")
    p.add_argument("--grid-items", type=int, default=4, help="items in the grid figure")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument(
        "--item-figures", action="store_true",
        help="also draw the per-item figures of runs that lack them",
    )  # fmt: skip
    args = p.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.item_figures:
        from inversebench.leaderboard_figures import item_figures

        done = item_figures(args.root)
        print(f"{len(done)} per-item figure files written")
    written = write_leaderboard(
        args.root, args.out, metrics, args.figure_metric, args.grid_items, not args.no_figures
    )
    print(Path(written["leaderboard.md"]).read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
