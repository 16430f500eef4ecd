"""The leaderboard's figures, one pair per table (inversebench.leaderboard.Table): quality against
compute per item (``compute_figure``) and a grid of the rows' estimates on common items beside the
target (``grid_figure``). ``inversebench.leaderboard.write_leaderboard`` saves them as
``<problem>_<compat>_{compute,grid}.png`` (``write_figures``); ``item_figures`` draws the per-item
panels of runs that lack them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from inversebench.figures import default_style
from inversebench.leaderboard import Table, arrow, collect_runs, direction


def primary_metric(table: Table, metric: str | None = None) -> str | None:
    """``metric`` when the table has it, else its first ranked metric column."""
    if metric is not None and metric in table.metrics:
        return metric
    ranked = [m for m in table.metrics if direction(m) is not None]
    return ranked[0] if ranked else (table.metrics[0] if table.metrics else None)


@default_style
def compute_figure(table: Table, metric: str | None = None):
    """Quality (mean +- std over items) against seconds and NFE per item, one point per row;
    None when the table has no metric."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    metric = primary_metric(table, metric)
    if metric is None:
        return None
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    for ax, x_name, x_label in (
        (axes[0], "seconds", "wall seconds per item"),
        (axes[1], "nfe", "network evaluations (NFE) per item"),
    ):
        xs = []
        for i, r in enumerate(table.rows):
            x, y, e = r.value(x_name), r.value(metric), r.value(f"{metric}_std")
            if x is None or y is None or not math.isfinite(y):
                continue
            xs.append(x)
            ax.errorbar(x, y, yerr=e, fmt="o", color=cmap(i % 10), capsize=3, label=r.label)
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        positive = [x for x in xs if x > 0]
        if positive and len(positive) == len(xs) and max(xs) / min(positive) > 10:
            ax.set_xscale("log")
        elif positive and max(xs) / min(positive) > 10:
            ax.set_xscale("symlog", linthresh=1.0)
        if xs and max(xs) == min(xs) == 0:
            ax.set_xlim(-1, 1)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric + arrow(metric))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{table.problem} (compat={table.compat}): {table.items_note()}", fontsize=10)
    return fig


def common_items(table: Table, limit: int) -> list[int]:
    """The first ``limit`` item ids solved (with a saved result) by every row."""
    shared = None
    for r in table.rows:
        have = {i for i in r.item_ids if (r.path / f"result_{i}.pt").is_file()}
        shared = have if shared is None else shared & have
    return sorted(shared or ())[:limit]


@default_style
def grid_figure(table: Table, num_items: int = 4, size: float = 2.2):
    """Rows = the first ``num_items`` common items, columns = target (none for measured data) |
    each row's estimate (the mean over its samples), one colour scale per item (the target's and
    the estimates' range) with its bar; None for non-image problems or when the rows share no
    item."""
    import torch
    from matplotlib.figure import Figure

    from inversebench.figures import field_style

    style = field_style(table.rows[0].problem_config)
    ids = common_items(table, num_items)
    if style is None or not ids:
        return None

    def load(run, item):
        return torch.load(run.path / f"result_{item}.pt", map_location="cpu", weights_only=True)

    has_target = load(table.rows[0], ids[0]).get("target") is not None  # measured data: none
    cols = len(table.rows) + int(has_target)
    fig = Figure(figsize=(size * cols + 0.8, size * len(ids) + 0.6), layout="constrained")
    axes = fig.subplots(len(ids), cols, squeeze=False)
    for k, item in enumerate(ids):
        images, titles = [], []
        for j, r in enumerate(table.rows):
            res = load(r, item)
            if j == 0 and has_target:
                images.append(style.values(res["target"])[0])
                titles.append("target")
            est = style.values(res["recon"])
            images.append(est.mean(0))
            titles.append(r.label + (f" (mean of {est.shape[0]})" if est.shape[0] > 1 else ""))
        vals = np.concatenate([im[np.isfinite(im)].ravel() for im in images])
        if style.symmetric:
            top = float(np.abs(images[0]).max()) or 1.0
            lo, hi = -top, top
        else:
            lo = 0.0 if style.nonnegative else float(images[0].min())
            hi = float(np.percentile(vals, 99.9)) if vals.size else 1.0
        for j, (im, title) in enumerate(zip(images, titles, strict=True)):
            ax = axes[k, j]
            shown = ax.imshow(
                im, cmap=style.cmap, vmin=lo, vmax=hi, extent=style.extent, origin=style.origin,
                interpolation="nearest",
            )  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"item {item}", fontsize=8)
        bar = fig.colorbar(shown, ax=axes[k, :], shrink=0.9)
        bar.set_label(f"{style.label} ({style.unit})", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{table.problem} (compat={table.compat})", fontsize=10)
    return fig


def write_figures(tables: list[Table], out, figure_metric=None, grid_items: int = 4) -> dict:
    """Each table's compute and grid figures as ``<out>/<table key>_{compute,grid}.png``; returns
    the paths written by name."""
    from inversebench.figures import save_figure

    written = {}
    for t in tables:
        for kind, fig in (
            ("compute", compute_figure(t, figure_metric)),
            ("grid", grid_figure(t, grid_items)),
        ):
            if fig is not None:
                name = f"{t.key}_{kind}.png"
                written[name] = save_figure(fig, Path(out) / name)
    return written


def item_figures(root, overwrite: bool = False) -> list[Path]:
    """Per-item figures (``inversebench.figures.save_item_figures``, from the configs alone: no
    operator, so no black-hole dirty image) for every finished run under ``root`` that lacks
    them."""
    import torch

    from inversebench.figures import save_item_figures
    from utils.results import load_result

    runs, _ = collect_runs(root)
    paths = []
    for r in runs:
        for item in r.item_ids:
            if not overwrite and (r.path / "figures" / f"item_{item}.png").is_file():
                continue
            res = r.path / f"result_{item}.pt"
            if res.is_file():
                with torch.no_grad():
                    paths += save_item_figures(
                        r.path, item, load_result(res), r.problem_config, label=r.label
                    )
    return paths
