"""EDM U-Nets (Karras et al. 2022): checkpoint layout, reference outputs, and forward contracts.

Manifests in tests/manifests/ hold facts taken from the reference implementation
(devzhk/InverseBench models/unets.py): every state-dict key and shape of the released priors'
backbones, and outputs of small networks with deterministic weights. Forward checks use small
networks so the file runs in seconds on a 2-core CPU; only the manifest test builds full size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from models.modules import UNetBlock
from models.unets import DhariwalUNet, SongUNet

MANIFESTS = Path(__file__).parent / "manifests"
CLASSES = {"DhariwalUNet": DhariwalUNet, "SongUNet": SongUNet}
RELEASED = ["dhariwal-128", "dhariwal-320-mri", "song-64-blackhole"]
SMALL = dict(model_channels=32, channel_mult=[1, 2], attn_resolutions=[8], num_blocks=1, dropout=0)


def deterministic_fill(net: torch.nn.Module) -> torch.nn.Module:
    """Weights from a sine wave, independent of any RNG, sized like a sane initialisation."""
    with torch.no_grad():
        for i, (name, t) in enumerate(net.state_dict().items()):
            if name.endswith("resample_filter"):  # fixed FIR taps, not learned
                continue
            wave = torch.sin(0.731 * torch.arange(t.numel(), dtype=torch.float64) + i)
            module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if name.endswith("freqs"):
                vals = 16 * wave
            elif module.startswith("norm") or module.endswith("_norm"):
                vals = 1 + 0.1 * wave if name.endswith("weight") else 0.1 * wave
            elif t.ndim == 1:
                vals = 0.1 * wave
            else:
                vals = wave / math.sqrt(t[0].numel())
            t.copy_(vals.reshape(t.shape).to(t.dtype))
    return net


def golden_inputs(in_ch: int, res: int, label_dim: int, augment_dim: int, batch: int = 2):
    """Deterministic float64 (x, noise_labels, class_labels, augment_labels)."""
    f64 = torch.float64
    n = batch * in_ch * res * res
    x = torch.sin(0.1 * torch.arange(n, dtype=f64)).reshape(batch, in_ch, res, res)
    sigma = torch.tensor([-0.3, 0.8], dtype=f64)
    labels = torch.eye(label_dim, dtype=f64)[[0, label_dim - 1]] if label_dim else None
    aug = None
    if augment_dim:
        aug = torch.cos(torch.arange(batch * augment_dim, dtype=f64)).reshape(batch, augment_dim)
    return x, sigma, labels, aug


def _manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def _perturbed(net: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Random offsets on every weight, so zero-initialised output layers do not hide the trunk."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def _small(cls=DhariwalUNet, **kw) -> torch.nn.Module:
    args = dict(img_resolution=16, in_channels=2, out_channels=2, **SMALL)
    args.update(kw)
    return cls(**args)


@pytest.mark.parametrize("name", RELEASED)
def test_state_dict_matches_reference_manifest(name):
    """Every key, shape and buffer of the released backbones; a manifest-shaped checkpoint,
    prefixed with ``model.`` as the preconditioner stores it, loads with strict=True."""
    man = _manifest(name)
    torch.manual_seed(0)
    net = CLASSES[man["class"]](**man["kwargs"])
    got = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert got == man["state_dict"]
    assert [k for k, _ in net.named_buffers()] == man["buffers"]
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{name}: {n_params:,} parameters (reference {man['num_parameters']:,})")
    assert n_params == man["num_parameters"]

    wrapper = torch.nn.Module()
    wrapper.model = net
    ckpt = {f"model.{k}": torch.zeros(s) for k, s in man["state_dict"].items()}
    wrapper.load_state_dict(ckpt, strict=True)


def test_reference_outputs():
    """Outputs of small networks with deterministic weights match the reference implementation.

    Run in float64: these weights make float32 results differ from float64 ones by up to 3e-3
    in the reference itself, while the two implementations agree in float64 to ~1e-11.
    """
    cases = json.loads((MANIFESTS / "unet-reference-outputs.json").read_text())["cases"]
    for name, case in cases.items():
        kw = case["kwargs"]
        net = deterministic_fill(CLASSES[case["class"]](**kw)).double().eval()
        args = golden_inputs(
            kw["in_channels"], kw["img_resolution"], kw.get("label_dim", 0),
            kw.get("augment_dim", 0),
        )  # fmt: skip
        with torch.no_grad():
            y = net(*args)
        assert list(y.shape) == case["shape"], name
        flat = y.flatten()
        want = torch.tensor(case["sample"], dtype=torch.float64)
        got = flat[:: case["sample_step"]]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
        assert flat.mean().item() == pytest.approx(case["mean"], rel=1e-9, abs=1e-12), name
        assert flat.square().mean().sqrt().item() == pytest.approx(case["rms"], rel=1e-9), name


@pytest.mark.parametrize("cls", [DhariwalUNet, SongUNet])
def test_forward_shape_dtype_and_batch_independence(cls):
    """(B, out_channels, H, W) in the input's dtype; each sample is denoised independently, which
    also pins the head/channel layout of the batched attention."""
    net = _perturbed(_small(cls, out_channels=3))
    x, sigma = torch.randn(3, 2, 16, 16), torch.tensor([0.1, 1.0, 5.0])
    with torch.no_grad():
        y = net(x, sigma)
        rows = torch.cat([net(x[i : i + 1], sigma[i : i + 1]) for i in range(3)])
        y64 = net.double()(x.double(), sigma.double())
    assert y.shape == (3, 3, 16, 16) and y.dtype == torch.float32
    assert y64.dtype == torch.float64
    torch.testing.assert_close(rows, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y64.float(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [DhariwalUNet, SongUNet])
def test_determinism_and_round_trip(cls):
    """Same seed, same weights; outputs repeat exactly; a strict state-dict round trip into a
    differently initialised network reproduces outputs bit for bit."""
    torch.manual_seed(3)
    a = _perturbed(_small(cls))
    torch.manual_seed(3)
    a2 = _perturbed(_small(cls))
    for (k, v), (k2, v2) in zip(a.state_dict().items(), a2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    torch.manual_seed(4)
    b = _small(cls).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x, sigma = torch.randn(2, 2, 16, 16), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        y = a(x, sigma)
        assert torch.equal(y, a(x, sigma))
        assert torch.equal(y, b(x, sigma))


def test_fresh_networks_start_near_zero():
    """EDM's init: ADM zeroes its output conv (exact zeros out); DDPM++ scales its output conv by
    1e-5 with zero bias (tiny but nonzero outputs)."""
    x, sigma = torch.randn(2, 2, 16, 16), torch.tensor([0.5, 2.0])
    adm = _small(DhariwalUNet).eval()
    assert adm.out_conv.weight.abs().max() == 0 and adm.out_conv.bias.abs().max() == 0
    with torch.no_grad():
        assert torch.equal(adm(x, sigma), torch.zeros(2, 2, 16, 16))
    song = _small(SongUNet).eval()
    head = song.dec["16x16_aux_conv"]
    assert 0 < head.weight.abs().max() < 1e-5 and head.bias.abs().max() == 0
    with torch.no_grad():
        y = song(x, sigma)
    assert 0 < y.abs().max() < 1e-3


def test_input_gradient_flows():
    """The solvers differentiate the denoiser with respect to its input."""
    net = _perturbed(_small(SongUNet)).requires_grad_(False)
    x = torch.randn(2, 2, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(net(x, torch.tensor([0.5, 2.0])).square().sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("cls", [DhariwalUNet, SongUNet])
def test_label_and_augment_conditioning(cls):
    """label_dim/augment_dim add map_label/map_augment; labels change the output; missing labels
    are an error; label_dropout=1 in training drops the class entirely."""
    net = _perturbed(_small(cls, label_dim=5, augment_dim=9))
    sd = net.state_dict()
    emb = 32 * 4 if cls is DhariwalUNet else 32
    assert list(sd["map_label.weight"].shape) == [emb, 5]
    assert list(sd["map_augment.weight"].shape) == [32, 9]
    assert ("map_label.bias" in sd) == (cls is SongUNet)  # ADM's class embedding has no bias
    assert "map_augment.bias" not in sd
    x, sigma = torch.randn(2, 2, 16, 16), torch.tensor([0.5, 2.0])
    onehot, aug = torch.eye(5)[[1, 3]], torch.randn(2, 9)
    with torch.no_grad():
        y = net(x, sigma, onehot, aug)
        assert not torch.allclose(y, net(x, sigma, torch.eye(5)[[0, 0]], aug))
        assert not torch.allclose(y, net(x, sigma, onehot))  # augment labels are optional
        with pytest.raises(ValueError, match="class_labels"):
            net(x, sigma)
        net.label_dropout = 1.0
        net.train()
        dropped = net(x, sigma, onehot, aug)
        net.eval()
        torch.testing.assert_close(dropped, net(x, sigma, torch.zeros(2, 5), aug))


def test_hydra_lists_and_scalar_noise_label():
    """ListConfig arguments (as Hydra passes them) build the same network; one noise label is
    shared by the whole batch."""
    cfg = OmegaConf.create(dict(SMALL, resample_filter=[1, 3, 3, 1]))
    torch.manual_seed(0)
    a = SongUNet(16, 2, 2, encoder_type="residual", **cfg)
    torch.manual_seed(0)
    b = SongUNet(16, 2, 2, encoder_type="residual", **OmegaConf.to_container(cfg))
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert a.enc["8x8_down"].conv0.resample_filter.shape == (1, 1, 4, 4)
    a = _perturbed(a)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x, torch.tensor(0.7)), a(x, torch.tensor([0.7, 0.7])))


def test_narrow_layers_skip_attention():
    """With fewer than 64 channels per head ADM's head count rounds to zero: no attention
    weights, as in the reference (the toy-grf prior relies on it)."""
    net = DhariwalUNet(16, 1, 1, model_channels=16, channel_mult=[1, 2], attn_resolutions=[8])
    assert not any(".qkv." in k for k in net.state_dict())
    blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
    assert all(b.num_heads == 0 for b in blocks)
