"""Observed data as test items: an item with ``observation`` and its physics but no ``target`` is
solved from its measurements as they are (no simulation) and evaluated without a truth."""

from __future__ import annotations

import pytest
import torch

from inverse_problems.linear import SVDLinear
from main import run
from training.exact import LinearGMMProblems
from utils.rng import OBSERVATION, BatchRNG


class ObservedGMM(LinearGMMProblems):
    """gmm items whose measurements were taken (simulated here, once) and whose truth is gone."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        op = SVDLinear(sigma_noise=0.0)
        physics = {k: item[k][None] for k in op.physics_keys}
        i = self.id_list[index]
        y = op.forward(item["target"][None].double(), **physics)
        y = y + item["sigma_noise"] * BatchRNG.for_items(7, [i], OBSERVATION).randn_like(y)
        return {"observation": y[0], **{k: v for k, v in item.items() if k != "target"}}


FAST = ["problem=gmm", "num_samples=16",
        "problem.evaluator.num_reference=500", "problem.data.id_list=0-2",
        "problem.data._target_=tests.test_observed.ObservedGMM"]  # fmt: skip


def test_observed_items_are_solved_from_their_measurements(config_factory, tmp_path):
    from hydra.utils import instantiate

    cfg = config_factory([*FAST, "algorithm.method.diffusion_scheduler_config.num_steps=10"])
    summary = run(cfg)
    res = torch.load(tmp_path / "dps/default/result_1.pt", weights_only=True)
    assert "target" not in res and res["recon"].shape == (16, 8, 1, 1)
    item = instantiate(cfg.problem.data)[1]
    assert torch.equal(res["observation"][0], item["observation"])  # taken, not simulated
    assert summary["sw"] > 0 and "nonfinite" in summary


def test_oracle_starts_are_refused_for_observed_items(config_factory):
    with pytest.raises(ValueError, match="init=constant"):
        run(config_factory([*FAST, "algorithm=adam"]))
