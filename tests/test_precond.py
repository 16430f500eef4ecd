"""Preconditioners: coefficient formulas, the sigma -> 0 limit, and checkpoint loading."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from models.loading import build_prior, load_state_dict
from models.precond import EDMPrecond, VEPrecond, VPPrecond, get_model, iDDPMPrecond

TINY = {
    "model_type": "DhariwalUNet",
    "model_channels": 16,
    "channel_mult": [1, 2],
    "attn_resolutions": [4],
    "num_blocks": 1,
    "dropout": 0.0,
}
TOY = OmegaConf.load("configs/pretrain/toy-grf.yaml").model


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (EDM zero-initialises output layers, which would hide F)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def _nets():
    return {
        "vp": VPPrecond(8, 2, **TINY),
        "ve": VEPrecond(8, 2, **TINY),
        "iddpm": iDDPMPrecond(8, 2, **TINY),
        "edm": EDMPrecond(8, 2, **TINY),
    }


@pytest.mark.parametrize("name", ["vp", "ve", "iddpm", "edm"])
def test_coefficients(name):
    """c_skip, c_out, c_in, c_noise against the formulas of Karras et al. (2022), Table 1."""
    net = _nets()[name]
    for s in (0.01, 0.5, 3.0, 60.0):
        sigma = torch.full((1, 1, 1, 1), s)
        c_skip, c_out, c_in, c_noise = (
            torch.as_tensor(c).double().reshape(-1)[0].item() for c in net.coefficients(sigma)
        )
        if name == "vp":
            t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log1p(s * s)) - 0.1) / 19.9
            want = (1, -s, 1 / math.sqrt(s * s + 1), 999 * t)
        elif name == "ve":
            want = (1, s, 1, math.log(s / 2))
        elif name == "iddpm":
            j = int((net.u - s).abs().argmin())
            want = (1, -s, 1 / math.sqrt(s * s + 1), 999 - j)
        else:
            sd = 0.5
            want = (
                sd**2 / (s * s + sd**2),
                s * sd / math.sqrt(s * s + sd**2),
                1 / math.sqrt(sd**2 + s * s),
                math.log(s) / 4,
            )
        assert (c_skip, c_out, c_in, c_noise) == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["vp", "ve", "iddpm", "edm"])
def test_denoiser_tends_to_identity(name):
    """|D(x, sigma) - x| = O(sigma) as sigma -> 0, for a network with random weights."""
    net = _randomize(_nets()[name])
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    errs = []
    with torch.no_grad():
        for s in (1e-2, 1e-3, 1e-4):
            errs.append(float((net(x, torch.tensor(s)) - x).abs().max()))
    assert errs[0] > 0 and errs[2] < 0.05 * errs[0], errs


def test_noise_ranges_and_grid():
    nets = _nets()
    assert nets["vp"].sigma_max == pytest.approx(152.16, abs=0.01)
    assert nets["vp"].sigma_min == pytest.approx(math.sqrt(math.expm1(0.1 * 1e-5)), rel=1e-3)
    u = nets["iddpm"].u
    assert u[-1] == 0 and torch.all(u[:-1] > u[1:])
    s = nets["iddpm"].round_sigma(torch.tensor([0.3, 5.0]))
    assert torch.all(torch.isin(s, u))
    assert isinstance(get_model("edm", img_resolution=8, img_channels=2, **TINY), EDMPrecond)
    with pytest.raises(ValueError, match="model_type"):
        EDMPrecond(8, 1, model_type="Transformer")


def test_scalar_and_per_row_sigma_agree():
    net = _randomize(EDMPrecond(8, 2, **TINY))
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.tensor(0.7)), net(x, torch.full((3,), 0.7)))


def _save_toy(tmp_path, **extra):
    from hydra.utils import instantiate

    net = _randomize(instantiate(TOY))
    path = tmp_path / "ckpt.pt"
    torch.save({"net": net.state_dict(), "ema": net.state_dict(), **extra}, path)
    return net, path


def test_checkpoint_round_trip(tmp_path):
    """A saved checkpoint loads strictly through build_prior and reproduces outputs exactly."""
    net, path = _save_toy(tmp_path)
    loaded = build_prior(TOY, path)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor(0.4)), loaded(x, torch.tensor(0.4)))


def test_corrupt_checkpoint(tmp_path):
    _, path = _save_toy(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged zip archive"):
        load_state_dict(path)


def test_pickle_needs_opt_in(tmp_path):
    """A checkpoint holding a pickled module is refused unless allow_pickle=true."""
    net = _randomize(EDMPrecond(8, 2, **TINY))
    path = tmp_path / "legacy.pkl"
    torch.save({"ema": net}, path)
    with pytest.raises(ValueError, match="allow_pickle=true"):
        load_state_dict(path)
    state = load_state_dict(path, allow_pickle=True)
    assert state.keys() == net.state_dict().keys()


def test_wrong_pretrain_names_the_right_one(tmp_path):
    """Loading a checkpoint into another architecture says which pretrain= fits it."""
    _, path = _save_toy(tmp_path)
    wrong = OmegaConf.create({**OmegaConf.to_container(TOY), "model_channels": 32})
    with pytest.raises(ValueError, match=r"pretrain=toy\-grf"):
        build_prior(wrong, path)


def test_weights_without_checkpoint_refused():
    with pytest.raises(ValueError, match=r"problem\.prior"):
        build_prior(TOY, None)
