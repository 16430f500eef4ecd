"""Every algorithm config runs through main.py for a handful of steps on the smallest problem whose
capabilities it needs (today: gmm, which offers gradient, linear, adjoint, svd and pseudo-inverse),
and writes finite results with its compute counted. The tiny settings (and the algorithms that
refuse gmm) are tests/registry.py's ``ALGORITHMS``; tests/test_algorithms_shared.py runs the
shared batching / state / compute checks over the same registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from main import run
from tests.registry import ALGORITHMS, GMM_TINY, NOT_ON_GMM

ROOT = Path(__file__).resolve().parents[1]


def test_every_algorithm_config_is_covered():
    configs = {p.stem for p in (ROOT / "configs" / "algorithm").glob("*.yaml")}
    assert configs == set(ALGORITHMS), "add the new algorithm to tests/registry.py ALGORITHMS"


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_algorithm_runs_through_main(algo, config_factory):
    cfg = config_factory([*GMM_TINY, f"algorithm={algo}", *ALGORITHMS[algo]])
    if algo in NOT_ON_GMM:  # domain baselines: a clear refusal before any work
        with pytest.raises(ValueError, match=NOT_ON_GMM[algo]):
            run(cfg)
        return
    summary = run(cfg)
    assert np.isfinite(summary["sw"]) and np.isfinite(summary["mode_tv"])
    calls = summary["nfe"] + summary["op_forward"] + summary["op_gradient"] + summary["op_linear"]
    assert calls > 0
