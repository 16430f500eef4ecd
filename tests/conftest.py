"""Shared fixtures: Hydra composition of the run config with results under a temporary folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")

os.environ.setdefault("WANDB_MODE", "disabled")
# Derived files (SVD factors) go to a fresh folder, not the user's cache.
os.environ.setdefault("INVERSEBENCH_CACHE", tempfile.mkdtemp(prefix="inversebench-test-cache-"))
# One thread: OpenMP spin-waiting makes 2-thread ops collapse when anything else shares the 2 cores.
torch.set_num_threads(int(os.environ.get("INVERSEBENCH_TEST_THREADS", "1")))


def make_config(overrides: list[str], exp_dir: Path | None = None):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        extra = [f"problem.exp_dir={exp_dir}"] if exp_dir is not None else []
        return compose("config", overrides=["progress=false", *extra, *overrides])


@pytest.fixture
def config_factory(tmp_path):
    return lambda overrides, exp_dir=tmp_path: make_config(overrides, exp_dir)
