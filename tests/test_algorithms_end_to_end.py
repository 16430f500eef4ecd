"""Every algorithm config runs through main.py for a handful of steps on the smallest problem whose
capabilities it needs (today: gmm, which offers gradient, linear, adjoint, svd and pseudo-inverse),
and writes finite results with its compute counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from main import run

ROOT = Path(__file__).resolve().parents[1]
M = "algorithm.method"

#: A few steps of each algorithm (keys differ between methods).
TINY = {
    "cs_mri": [f"{M}.max_iter=3"],
    "csgm_mri": [f"{M}.sigmas_config.num_levels=10", f"{M}.start_iter=6", f"{M}.n_steps_each=2"],
    "daps": [
        f"{M}.annealing_scheduler_config.num_steps=3",
        f"{M}.diffusion_scheduler_config.num_steps=2",
        f"{M}.lgvd_config.num_steps=2",
    ],
    "ddnm": [f"{M}.scheduler_config.num_steps=4"],
    "ddrm": [f"{M}.scheduler_config.num_steps=4"],
    "ddsmc": [
        f"{M}.annealing_scheduler_config.num_steps=4",
        f"{M}.rho_scheduler_config.num_steps=4",
        f"{M}.smc_config.num_particles=4",
    ],
    "diffpir": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "dpg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_mc_samples=4",
        f"{M}.batch_size=4",
    ],
    "dps": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "ehtim_rml": [f"{M}.maxit=3", f"{M}.rounds=1"],
    "dps_gsg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_queries=4",
        f"{M}.batch_size=4",
    ],
    "eki": [f"{M}.num_particles=8", f"{M}.num_updates=2"],
    "eki_kalman": [f"{M}.num_particles=8", f"{M}.num_updates=2"],
    "enkg": [f"{M}.num_particles=8", f"{M}.num_steps=4"],
    "fista_tv": [f"{M}.num_iters=3", f"{M}.tv_iters=2", f"{M}.power_iters=3"],
    "fps": [f"{M}.scheduler_config.num_steps=4", f"{M}.num_particles=4"],
    "lgd": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "mcgdiff": [f"{M}.scheduler_config.num_steps=4", f"{M}.num_particles=4"],
    "pigdm": [f"{M}.scheduler_config.num_steps=4"],
    "pnpdm": [
        f"{M}.annealing_scheduler_config.num_steps=2",
        f"{M}.diffusion_scheduler_config.num_steps=3",
        f"{M}.lgvd_config.num_steps=2",
    ],
    "reddiff": [f"{M}.num_steps=4"],
    "score_mri": [f"{M}.scheduler_config.num_steps=4"],
    "scg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_candidates=2",
        f"{M}.batch_size=2",
    ],
    "uncond": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "adam": [f"{M}.num_steps=5", f"{M}.init=constant", f"{M}.bounds=null", f"{M}.lr=0.1"],
    "lbfgs": [f"{M}.num_steps=2", f"{M}.init=constant", f"{M}.bounds=null"],
}


#: Algorithms bound to one problem family (they run in that problem's tests): on gmm they must
#: refuse with this message.
NOT_ON_GMM = {"cs_mri": "multi-coil MRI", "ehtim_rml": "black-hole imaging operator"}


def test_every_algorithm_config_is_covered():
    configs = {p.stem for p in (ROOT / "configs" / "algorithm").glob("*.yaml")}
    assert configs == set(TINY), "add the new algorithm to TINY"


@pytest.mark.parametrize("algo", sorted(TINY))
def test_algorithm_runs_through_main(algo, config_factory):
    cfg = config_factory(
        [
            "problem=gmm",
            "pretrain=gmm",
            f"algorithm={algo}",
            "problem.data.num_items=2",
            "num_samples=4",
            "batch_size=2",
            "problem.evaluator.num_reference=200",
            *TINY[algo],
        ]
    )
    if algo in NOT_ON_GMM:  # domain baselines: a clear refusal before any work
        with pytest.raises(ValueError, match=NOT_ON_GMM[algo]):
            run(cfg)
        return
    summary = run(cfg)
    assert np.isfinite(summary["sw"]) and np.isfinite(summary["mode_tv"])
    calls = summary["nfe"] + summary["op_forward"] + summary["op_gradient"] + summary["op_linear"]
    assert calls > 0
