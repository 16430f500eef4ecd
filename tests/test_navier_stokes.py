"""The Navier–Stokes operator, its data generator and the GRF-unknown problem end to end. Row
independence and the differentiable solver's Taylor test: tests/test_operators.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from algo.dps import DPS
from inverse_problems.navier_stokes import ForwardNavierStokes2d
from main import run
from models.analytic import AnalyticPrior
from scripts.make_navier_stokes_data import generate
from tests.registry import ns_field as _x
from training.dataset import LMDBData, write_lmdb
from utils.distributions import matern_field

ROOT = Path(__file__).resolve().parents[1]


def test_forward_shape_and_black_box_by_default():
    op = ForwardNavierStokes2d(resolution=16, downsample_factor=4, delta_t=0.01)
    y = op.forward(_x(3))
    assert y.shape == (3, 1, 4, 4) and y.dtype == torch.float32
    assert "gradient" not in op.capabilities
    with pytest.raises(ValueError, match="gradient"):
        DPS(AnalyticPrior(matern_field(16)), op, {"num_steps": 2}, guidance_scale=1.0)
    with pytest.raises(ValueError, match="shape"):
        op.forward(torch.zeros(1, 1, 8, 8))


def test_generated_data_round_trip(tmp_path):
    """Generated fields in the reference's LMDB format read back identically (x = w / 10)."""
    data = generate(2, resolution=32, seed=0, time=1.0, batch=2)
    assert data.shape == (2, 1, 32, 32) and np.isfinite(data).all()
    assert 1.0 < np.abs(data).max() < 30.0
    write_lmdb(tmp_path, list(data))
    ds = LMDBData(tmp_path, resolution=32, std=5.0)
    torch.testing.assert_close(ds[1]["target"], torch.from_numpy(data[1]) / 10)


def test_grf_unknown_problem_end_to_end(config_factory):
    cfg = config_factory(
        [
            "problem=navier-stokes-grf",
            "pretrain=grf",
            "problem.resolution=16",
            "algorithm.method.diffusion_scheduler_config.num_steps=4",
            "problem.data.id_list=0-1",
            "num_samples=2",
            "batch_size=2",
        ]
    )
    summary = run(cfg)
    assert np.isfinite(summary["relative_l2"]) and summary["op_gradient"] == 4 * 2


def test_shipped_small_test_split_matches_card_and_generator():
    """data/navier-stokes-small/test: 16 fields of 32^2 with the statistics Dataset_Card.md states
    (range (-21.2, 21.0), std 4.66), and the generator reproduces them from their seeds."""
    ds = LMDBData(ROOT / "data/navier-stokes-small/test", resolution=32, std=5.0)
    w = torch.stack([ds[i]["target"] for i in range(len(ds))]) * 10
    assert len(ds) == 16 and w.shape == (16, 1, 32, 32)
    assert abs(float(w.std()) - 4.66) < 0.01
    assert abs(float(w.min()) + 21.15) < 0.01 and abs(float(w.max()) - 21.02) < 0.01
    again = generate(2, resolution=32, seed=1, batch=2)
    torch.testing.assert_close(torch.from_numpy(again), w[:2], rtol=0, atol=1e-4)


def test_shipped_small_prior_matches_the_data():
    """Unconditional samples of checkpoints/ns-small.pt have the data's pixel std (measured 0.489
    vs 0.496) and radial spectrum (ratio 0.87-1.05 at |k| = 1..16)."""
    from tests.conftest import shipped_prior_samples

    x = shipped_prior_samples("navier-stokes-small", "ns-small.pt", 32)
    ds = LMDBData(ROOT / "data/navier-stokes-small/test", resolution=32, std=5.0)
    t = torch.stack([ds[i]["target"] for i in range(16)])
    assert abs(float(x.std()) / float(t.std()) - 1) < 0.1

    def radial(z):
        power = torch.fft.fft2(z[:, 0]).abs().square().mean(0)
        k = torch.fft.fftfreq(32) * 32
        shell = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round()
        return torch.stack([power[shell == r].mean() for r in (1, 2, 4, 8)])

    ratio = radial(x) / radial(t)
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio


def test_small_problem_end_to_end(config_factory):
    """navier-stokes-small through main.py with the shipped prior: DPS (differentiable solver)
    and EnKG (black box) both run and both beat the zero field (relative L2 1)."""
    for algo, extra in (
        ("dps", ["algorithm.method.diffusion_scheduler_config.num_steps=4"]),
        ("enkg", ["algorithm.method.num_steps=4", "algorithm.method.num_particles=8"]),
    ):
        cfg = config_factory(
            [
                "problem=navier-stokes-small",
                "pretrain=navier-stokes-small",
                f"algorithm={algo}",
                "problem.data.id_list=3-3",
                "batch_size=1",
                *extra,
            ]
        )
        summary = run(cfg)
        assert np.isfinite(summary["relative_l2"]), algo
        if algo == "enkg":
            assert summary["op_gradient"] == 0 and summary["op_forward"] > 0
