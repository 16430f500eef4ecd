"""The run record: per-item result files, metrics.csv, summary.json, and the summary table.

``result_<id>.pt`` keeps the reference's keys -- ``observation`` (the measurement tensor),
``recon`` (N, C, H, W) and ``target`` (1, C, H, W) in physical units -- plus ``physics`` (the
item's per-item operator parameters) and ``compute``. Everything is a plain tensor or number, so
``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from utils.io import atomic_torch_save
from utils.observation import Observation

COMPUTE_COLUMNS = ["nfe", "op_forward", "op_gradient", "op_linear", "seconds", "peak_mb"]
# Keys that change how a run is executed but not its results.
RUN_ONLY_KEYS = (
    "batch_size",
    "device",
    "overwrite",
    "inference",
    "wandb",
    "compile",
    "black_box",
    "tf32",
    "progress",
    "allow_pickle",
    "shard",
    "objective",
    "figures",
)


def result_path(exp_dir: Path, item_id: int) -> Path:
    return Path(exp_dir) / f"result_{item_id}.pt"


def save_result(
    path, observation: Observation, recon, target, compute: dict, fingerprint: str | None = None
) -> None:
    """``fingerprint``: of the settings that made the result (utils/experiment.py)."""
    state = observation.state_dict()
    record = {
        "observation": state["y"],
        "physics": state["physics"],
        "recon": recon.detach().cpu(),
        "compute": dict(compute),
    }
    if target is not None:  # observed data have no target
        record["target"] = target.detach().cpu()
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    atomic_torch_save(record, path)


UNREADABLE = "unreadable"


def result_fingerprint(path) -> str | None:
    """The fingerprint a result was saved with: None when it records none (made before results
    recorded their settings), ``UNREADABLE`` for a corrupt or truncated file."""
    try:
        res = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a corrupt file is no result: it is recomputed (overwrite) or refused
        return UNREADABLE
    return res.get("fingerprint") if isinstance(res, dict) else UNREADABLE


def remove_result(exp_dir, item_id: int) -> None:
    """Delete an item's result and the merged records that included it."""
    for path in (result_path(exp_dir, item_id), Path(exp_dir) / "metrics.csv",
                 Path(exp_dir) / "summary.json"):  # fmt: skip
        path.unlink(missing_ok=True)


def load_result(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no saved result at {path}; run with inference=true first (inference=false only "
            "evaluates results that exist)"
        )
    res = torch.load(path, map_location="cpu", weights_only=True)
    obs = res["observation"]
    res["observation"] = Observation(
        obs if torch.is_tensor(obs) else torch.as_tensor(obs), res.get("physics", {})
    )
    return res


def collate(items: list[dict]) -> dict:
    """Stack the tensors of dataset items (dicts) along a new batch dimension."""
    out = {}
    for key, value in items[0].items():
        if torch.is_tensor(value):
            out[key] = torch.stack([it[key] for it in items])
        elif isinstance(value, (int, float, np.ndarray)):
            out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
    return out


def summarize(rows: list[dict], names: list[str]) -> dict[str, float]:
    """``{name: mean, name_std: std}`` over rows, in row order."""
    out: dict[str, float] = {}
    for name in names:
        vals = np.asarray([r[name] for r in rows if name in r], dtype=np.float64)
        if len(vals):
            out[name] = float(vals.mean())
            out[f"{name}_std"] = float(vals.std())
    return out


def summary_table(summary: dict[str, float], names: list[str], title: str) -> str:
    width = max([len(n) for n in names] + [6])
    lines = [title, f"{'metric':<{width}}  {'mean':>12}  {'std':>12}", "-" * (width + 28)]
    for n in names:
        if n in summary:
            lines.append(f"{n:<{width}}  {summary[n]:>12.6g}  {summary[n + '_std']:>12.6g}")
    return "\n".join(lines)


def result_config(config) -> dict:
    """The part of the resolved config that determines the results."""
    cfg = OmegaConf.to_container(config, resolve=True)
    for k in (*RUN_ONLY_KEYS, "exp_name"):  # the folder's name is not a setting of its results
        cfg.pop(k, None)
    cfg.get("problem", {}).pop("exp_dir", None)
    # Which items are solved, and how they are scored, do not change any item's result: saved
    # results may be re-evaluated with other metric settings (inference=false).
    cfg.get("problem", {}).get("data", {}).pop("id_list", None)
    cfg.get("problem", {}).pop("evaluator", None)
    return cfg
