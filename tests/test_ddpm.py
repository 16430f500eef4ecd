"""Tests for the guided-diffusion ADM U-Net (models/ddpm.py).

The manifest tests/manifests/adm-ffhq256.json was dumped from the original guided-diffusion
UNetModel (DPS's copy) built with DPS's FFHQ-256 settings. Outside this repository the original
code was also run side by side with models.ddpm.UNetModel on identical weights: outputs matched
bit for bit in float32 (full 256 px FFHQ config, input gradients included), and to ~1e-14 in
float64 for several variants (legacy/new attention order, no resblock_updown, conv_resample off,
fractional channel_mult, dims 1 and 3, class-conditional). These tests do not need that code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from models.ddpm import UNetModel, timestep_embedding

MANIFEST = json.loads((Path(__file__).parent / "manifests" / "adm-ffhq256.json").read_text())

# The FFHQ-256 layout shrunk to run in milliseconds: resblock up/down, AdaGN, 64 px-style heads.
SMALL = dict(
    img_resolution=32,
    in_channels=3,
    out_channels=3,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 1, 2, 2),
    attention_resolutions=(4,),
    num_heads=4,
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
)
# Smaller still, for the backward pass and CPU float16 (both slow on a CPU).
TINY = dict(SMALL, img_resolution=16, channel_mult=(1, 2), attention_resolutions=(2,))


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (ADM zero-initialises output convs: a fresh net outputs 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _inputs(batch=2, res=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, res, res, generator=gen), torch.tensor([12.25, 803.5])[:batch]


def test_ffhq256_state_dict_matches_manifest():
    with torch.device("meta"):  # shapes only: no 94M-parameter allocation
        model = UNetModel(**MANIFEST["config"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(MANIFEST["shapes"])  # same keys, same order
    assert shapes == MANIFEST["shapes"]
    assert sum(p.numel() for p in model.parameters()) == MANIFEST["num_parameters"] == 93_563_910
    # learn_sigma: the checkpoint's last conv has [epsilon, variance] = 2 * 3 channels.
    assert shapes["out.2.weight"] == [6, 128, 3, 3]
    checkpoint = {k: torch.empty(s, device="meta") for k, s in MANIFEST["shapes"].items()}
    model.load_state_dict(checkpoint, strict=True, assign=True)


def test_small_forward_shape_dtype_and_epsilon_half_only():
    model = _randomized(UNetModel(**SMALL))
    head = {}
    model.out.register_forward_hook(lambda m, a, out: head.setdefault("full", out))
    x, t = _inputs()
    with torch.no_grad():
        eps = model(x, t)
    assert eps.shape == (2, 3, 32, 32) and eps.dtype == torch.float32
    assert head["full"].shape == (2, 6, 32, 32)
    assert torch.equal(eps, head["full"][:, :3])
    assert torch.isfinite(eps).all() and eps.abs().max() > 0

    no_sigma = UNetModel(**SMALL, learn_sigma=False)
    assert no_sigma.out[2].out_channels == 3


def test_fresh_model_outputs_zero():
    # ADM's zero-initialised output conv: an untrained net predicts epsilon = 0.
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(UNetModel(**SMALL).eval()(x, t), torch.zeros(2, 3, 32, 32))


def test_float_timesteps():
    emb = timestep_embedding(torch.tensor([0.0, 2.5]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # [cos, sin] at t = 0
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)  # odd width is padded

    model = _randomized(UNetModel(**SMALL))
    x, _ = _inputs()
    with torch.no_grad():
        a = model(x, torch.tensor([250.0, 250.0]))
        b = model(x, torch.tensor([250.5, 250.5]))
        c = model(x, 250.0)  # a scalar is broadcast over the batch
        d = model(x, torch.tensor(250, dtype=torch.long))
    assert not torch.allclose(a, b)
    assert torch.equal(a, c) and torch.equal(a, d)


def test_state_dict_round_trip(tmp_path):
    model = _randomized(UNetModel(**SMALL), seed=3)
    path = tmp_path / "adm.pt"
    torch.save(model.state_dict(), path)
    clone = UNetModel(**SMALL).eval()
    clone.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t), clone(x, t))


def test_label_conditional():
    model = _randomized(UNetModel(**SMALL, label_dim=5))
    assert model.label_emb.weight.shape == (5, 128)
    x, t = _inputs()
    labels = torch.tensor([1, 4])
    one_hot = torch.nn.functional.one_hot(labels, 5).float()  # as the preconditioners pass them
    with torch.no_grad():
        by_index = model(x, t, labels)
        by_one_hot = model(x, t, one_hot)
        other = model(x, t, torch.tensor([2, 0]))
        # VPPrecond's default is a single all-zero row: broadcast, read as class 0.
        default = model(x, t, torch.zeros(1, 5))
        class0 = model(x, t, torch.tensor([0, 0]))
    assert torch.equal(by_index, by_one_hot)
    assert not torch.allclose(by_index, other)
    assert torch.equal(default, class0)
    with pytest.raises(ValueError, match="class_labels"):
        model(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        UNetModel(**SMALL)(x, t, labels)


def test_hydra_listconfig_arguments():
    cfg = OmegaConf.create(
        {"_target_": "models.ddpm.UNetModel", **SMALL, "channel_mult": [1, 1, 2, 2]}
        | {"attention_resolutions": [4]}
    )
    from_hydra = instantiate(cfg)
    direct = UNetModel(**SMALL)
    assert {k: v.shape for k, v in from_hydra.state_dict().items()} == {
        k: v.shape for k, v in direct.state_dict().items()
    }


def test_no_resblock_updown_variant_keys():
    # Plain up/down layers with learned convs: the original names them `op` and `conv`.
    kw = dict(SMALL, resblock_updown=False, use_scale_shift_norm=False, num_head_channels=-1)
    keys = UNetModel(**kw).state_dict().keys()
    # Indices checked against the original for this layout (no attention at ds 8).
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.1.conv.weight" in keys
    assert "output_blocks.3.2.conv.weight" in keys  # after the ds-4 attention block
    assert "input_blocks.1.0.emb_layers.1.weight" in keys
    model = _randomized(UNetModel(**kw))
    x, t = _inputs()
    with torch.no_grad():
        assert model(x, t).shape == (2, 3, 32, 32)


def test_checkpointing_gives_same_gradients():
    plain = _randomized(UNetModel(**TINY))
    ckpt = UNetModel(**TINY, use_checkpoint=True).eval()
    ckpt.load_state_dict(plain.state_dict())
    x, t = _inputs(batch=1, res=16)
    grads = []
    for model in (plain, ckpt):
        xr = x.clone().requires_grad_(True)
        model(xr, t).square().sum().backward()  # DPS-style gradient w.r.t. the input
        grads.append(xr.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_fp16_torso():
    model = _randomized(UNetModel(**TINY, use_fp16=True))
    model.convert_to_fp16()  # the random fill above went through copy_, which kept the dtypes
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert model.out[2].weight.dtype == torch.float32  # head, norms and embeddings stay fp32
    assert model.time_embed[0].weight.dtype == torch.float32
    reference = UNetModel(**TINY).eval()
    reference.load_state_dict(model.state_dict())  # fp16 weights load into an fp32 model
    x, t = _inputs(batch=1, res=16)
    with torch.no_grad():
        out, ref = model(x, t), reference(x, t)
        assert model(x.half(), t).dtype == torch.float16
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())
