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
        # no per-item figures unless a test asks (drawing costs seconds per item)
        return compose("config", overrides=["progress=false", "figures=false", *extra, *overrides])


@pytest.fixture
def config_factory(tmp_path):
    return lambda overrides, exp_dir=tmp_path: make_config(overrides, exp_dir)


def shipped_prior_samples(pretrain: str, checkpoint: str, num: int, steps: int = 40):
    """``num`` unconditional samples of a shipped prior (``checkpoints/<checkpoint>``, network
    from ``configs/pretrain/<pretrain>.yaml``): Heun on ``steps`` EDM steps from sigma 80, one
    random stream per sample (streams 0 ... num-1)."""
    from models.loading import build_prior
    from utils.diffusion import sample
    from utils.rng import BatchRNG
    from utils.scheduler import Scheduler

    root = Path(CONFIGS).parent
    with initialize_config_dir(config_dir=str(root / "configs/pretrain"), version_base="1.3"):
        cfg = compose(pretrain)
    net = build_prior(cfg.model, root / "checkpoints" / checkpoint).eval()
    shape = (cfg.model.img_channels, cfg.model.img_resolution, cfg.model.img_resolution)
    sched = Scheduler(steps, 80.0, 0.002, 0.0, schedule="linear", timestep="poly-7")
    with torch.no_grad():
        return sample(net, BatchRNG(range(num)).randn(*shape) * 80, sched, solver="heun")
