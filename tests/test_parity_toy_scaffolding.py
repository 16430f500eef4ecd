"""The two sides of the toy problem of the algorithm parity fixtures agree (the arrays are made
here with the reference side's recipe, which imports nothing of the reference at module level)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from tests.parity_toy import toy_net, toy_observation, toy_operator

_TOY = Path(__file__).resolve().parents[1] / "scripts" / "reference_fixtures" / "_toy.py"


def reference_toy_module():
    spec = importlib.util.spec_from_file_location("_reference_toy", _TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_arrays(seed: int = 0):
    return reference_toy_module().make_toy(seed)


def test_toy_denoiser_and_operator_agree_with_the_reference_side_recipe():
    ref = reference_toy_module()
    arrays = ref.make_toy(0)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theirs = ref.ToyNet(arrays["mu"], arrays["cov"])(x, torch.tensor(0.7))
    ours = toy_net(arrays)(x, 0.7)
    assert torch.allclose(ours, theirs, atol=1e-13)  # measured 3e-15
    obs = toy_observation(arrays)
    A = arrays["U"] @ np.diag(arrays["S"]) @ arrays["Vt"][:10]
    y = toy_operator(arrays).forward(x, **obs.physics).numpy()
    assert np.abs(y - x.reshape(3, -1).numpy() @ A.T).max() < 1e-13
