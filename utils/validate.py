"""Checks of the run keys before any work: types and ranges, with messages that name the key and
the fix. (Data files are checked by the datasets, operators check their own physics arguments.)"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

BOOL_KEYS = ("inference", "overwrite", "progress", "wandb", "compile", "tf32", "black_box",
             "allow_pickle", "figures")  # fmt: skip


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value, key: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{key}={value!r} must be a whole number >= 1 (e.g. {key}=4)")
    return value


def nonnegative_number(value, key: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={value!r} must be a finite number >= 0 (0: noise-free data)")
    return float(value)


def check_run_keys(config) -> None:
    """Every run key of configs/config.yaml, and the problem's noise level."""
    positive_int(config.batch_size, "batch_size")
    positive_int(config.num_samples, "num_samples")
    if not _is_int(config.seed):
        raise ValueError(f"seed={config.seed!r} must be a whole number (e.g. seed=0)")
    for key in BOOL_KEYS:
        value = config.get(key)
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be true or false")
    objective = config.get("objective")
    if objective is not None and not isinstance(objective, str):
        raise ValueError(f"objective={objective!r} must be a metric name (e.g. objective=psnr)")
    model = config.problem.get("model") or {}
    if OmegaConf.is_config(model) and "sigma_noise" in model:
        value = model.sigma_noise
        if not isinstance(value, str):  # 'random' (exact problems' per-item draw) is checked there
            nonnegative_number(value, "problem.model.sigma_noise")
    data = config.problem.get("data") or {}
    if OmegaConf.is_config(data) and isinstance(data.get("sigma_noise"), (int, float)):
        nonnegative_number(data.sigma_noise, "problem.data.sigma_noise")
