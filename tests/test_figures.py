"""Per-item figures and black-hole FITS (inversebench/figures.py): the panels each problem gets,
files written with the expected size, measurement views equal to the operators' own adjoints, and a
FITS round trip through astropy and ehtim with the header values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from matplotlib.image import imread

from inversebench.figures import (
    RADPERUAS,
    _dirty_image,
    field_style,
    item_panels,
    save_item_figures,
    write_fits,
)
from tests.conftest import make_config
from utils.results import collate
from utils.rng import BatchRNG

torch.set_num_threads(1)


def simulated_item(problem: str, num_samples: int, noise: float = 0.05, **overrides):
    """Item 0 of a shipped small problem, its simulated observation, and a fake solve (the target
    plus seeded noise, ``num_samples`` rows) in physical units, as main.py saves them."""
    cfg = make_config([f"problem={problem}", *[f"{k}={v}" for k, v in overrides.items()]])
    op = instantiate(cfg.problem.model, device="cpu")
    data = collate([instantiate(cfg.problem.data)[0]])
    obs = op(data, BatchRNG.for_items(0, [0], 0))
    g = torch.Generator().manual_seed(0)
    x = data["target"]
    recon = x + noise * torch.randn((num_samples, *x.shape[1:]), generator=g, dtype=x.dtype)
    result = {
        "recon": op.unnormalize(recon),
        "target": op.unnormalize(x),
        "observation": obs,
    }
    return cfg, op, result


def png_shape(path) -> tuple[int, int]:
    return imread(path).shape[:2]


def test_inverse_scatter_single_sample(tmp_path):
    cfg, op, result = simulated_item("inv-scatter-small", 1)
    panels = item_panels(field_style(cfg.problem), result, op, cfg.problem)
    assert [p.title for p in panels] == ["target", "reconstruction", "error"]
    paths = save_item_figures(tmp_path, 7, result, cfg.problem, forward_op=op)
    assert paths == [tmp_path / "figures" / "item_7.png"]
    h, w = png_shape(paths[0])
    assert 300 < h < 600 and w > 2.5 * h  # one row of three panels with colour bars
    style = field_style(cfg.problem)
    assert style.extent == (-0.09, 0.09, -0.09, 0.09) and style.origin == "lower"


def test_mri_samples_mean_std_and_zero_filled(tmp_path):
    cfg, op, result = simulated_item("multi-coil-mri-small", 3)
    style = field_style(cfg.problem)
    panels = item_panels(style, result, op, cfg.problem, max_samples=3)
    titles = [p.title for p in panels]
    assert titles == [
        "target", "zero-filled", "sample 1 of 3", "sample 2 of 3", "sample 3 of 3",
        "mean of 3", "std of 3", "mean - target",
    ]  # fmt: skip
    obs = result["observation"]
    adjoint = op.adjoint(obs.y, **obs.physics)  # (1, 2, H, W): the operator's own
    expected = adjoint.to(torch.float64).square().sum(1).sqrt()[0].numpy()
    np.testing.assert_allclose(panels[1].image, expected, rtol=1e-10, atol=1e-12)
    mags = style.values(result["recon"])
    np.testing.assert_allclose(panels[5].image, mags.mean(0))
    np.testing.assert_allclose(panels[6].image, mags.std(0))
    paths = save_item_figures(tmp_path, 0, result, cfg.problem, forward_op=op)
    h, w = png_shape(paths[0])
    assert w > 6 * h  # eight panels in a row


def test_navier_stokes_observed_vorticity(tmp_path):
    cfg, op, result = simulated_item("navier-stokes-small", 1)
    style = field_style(cfg.problem)
    assert style.symmetric and style.cmap == "RdBu_r"
    panels = item_panels(style, result, op, cfg.problem)
    assert [p.title for p in panels] == ["target", "observed (time T)", "reconstruction", "error"]
    assert panels[1].image.shape == (16, 16)  # every second point of 32^2
    assert save_item_figures(tmp_path, 0, result, cfg.problem)[0].stat().st_size > 10_000


def test_fwi_velocity_and_shot_gather(tmp_path):
    """No wave simulation: the figure only reads the saved traces' shape."""
    cfg = make_config(["problem=fwi-small"])
    g = torch.Generator().manual_seed(0)
    v = 1.5 + 3 * torch.rand(1, 1, 64, 64, generator=g)
    traces = torch.randn(1, 4, 700, 65, generator=g)
    result = {"recon": v + 0.1, "target": v, "observation": traces}
    style = field_style(cfg.problem)
    assert style.unit == "km/s" and style.extent == (0, 64 * 20.0, 64 * 10.0, 0)
    panels = item_panels(style, result, None, cfg.problem)
    assert [p.title for p in panels] == ["target", "shot gather 1", "reconstruction", "error"]
    assert panels[1].style.extent == (0, 65, 700.0, 0)  # receivers x time (ms)
    np.testing.assert_allclose(panels[3].image, 0.1, atol=1e-6)
    assert save_item_figures(tmp_path, 3, result, cfg.problem)[0].is_file()


@pytest.mark.parametrize("problem", ["gmm", "grf"])
def test_exact_problems_have_no_figure(tmp_path, problem):
    cfg = make_config([f"problem={problem}"])
    assert field_style(cfg.problem) is None
    result = {"recon": torch.zeros(4, 2), "target": torch.zeros(1, 2), "observation": None}
    assert save_item_figures(tmp_path, 0, result, cfg.problem) == []
    assert not (tmp_path / "figures").exists()


def test_blackhole_panel_dirty_image_and_fits_round_trip(tmp_path):
    cfg, op, result = simulated_item("blackhole-small", 2)
    style = field_style(cfg.problem, op)
    assert style.cmap == "afmhot" and style.extent == (80.0, -80.0, -80.0, 80.0)  # uas
    panels = item_panels(style, result, op, cfg.problem)
    assert panels[1].title.startswith("dirty image") and panels[1].image.shape == (32, 32)
    # the same dirty image from the item's own (u, v) (measured items' path): both Re(A^H V) / m
    physics = {k: v.cpu() for k, v in result["observation"].physics.items()}
    uv = torch.as_tensor(np.stack([op.coverage.u, op.coverage.v], -1))[None]
    own = _dirty_image({**physics, "uv": uv}, None, cfg.problem)
    np.testing.assert_allclose(own * style.scale, panels[1].image, rtol=1e-9, atol=1e-9)
    paths = save_item_figures(tmp_path, 4, result, cfg.problem, forward_op=op)
    names = sorted(p.name for p in paths)
    assert names == [
        "item_4.png", "item_4_recon.fits", "item_4_std.fits", "item_4_target.fits",
    ]  # fmt: skip

    from astropy.io import fits

    jy = result["recon"][:, 0].to(torch.float64).numpy() * op.flux_scale
    with fits.open(tmp_path / "figures" / "item_4_recon.fits") as hdul:
        head, data = hdul[0].header, hdul[0].data
        np.testing.assert_allclose(data[::-1], jy.mean(0), rtol=1e-12)  # FITS row 1: south
    psize_deg = op.psize * 180 / math.pi
    assert head["CDELT1"] == pytest.approx(-psize_deg) and head["CDELT2"] == pytest.approx(
        psize_deg
    )
    assert head["FREQ"] == pytest.approx(op.coverage.source["rf"])
    assert head["OBJECT"] == "M87" and head["BUNIT"] == "JY/PIXEL" and head["STOKES"] == "I"
    assert head["CRPIX1"] == 16.5 and head["MJD"] == op.coverage.source["mjd"]
    assert head["OBSRA"] == pytest.approx(op.coverage.source["ra"] * 15)

    import ehtim as eh

    im = eh.image.load_fits(str(tmp_path / "figures" / "item_4_target.fits"))
    assert im.psize == pytest.approx(op.psize, rel=1e-9)
    assert im.psize / RADPERUAS * 32 == pytest.approx(160.0)  # the field of view in uas
    assert im.rf == pytest.approx(230e9) and im.source == "M87" and im.xdim == im.ydim == 32
    target = result["target"][0, 0].to(torch.float64).numpy() * op.flux_scale
    np.testing.assert_allclose(im.imvec.reshape(32, 32), target, rtol=1e-12)  # same orientation


def test_write_fits_rejects_a_stack(tmp_path):
    with pytest.raises(ValueError, match="one \\(H, W\\) image"):
        write_fits(tmp_path / "x.fits", np.zeros((2, 4, 4)), 1e-11)


def test_measured_item_without_target(tmp_path):
    """Observed data (no ``target``; per-item (u, v), mask and flux scale): no target and no
    error panel, the dirty image from the item's own (u, v) and valid entries, the recon FITS
    in the item's Jy."""
    cfg = make_config(["problem=blackhole-small"])
    g = torch.Generator().manual_seed(0)
    m = 40
    uv = 4e9 * (torch.rand(1, m, 2, generator=g, dtype=torch.float64) - 0.5)
    mask = torch.ones(1, m, dtype=torch.bool)
    mask[0, -5:] = False
    vis = torch.zeros(1, m, 2, dtype=torch.float64)
    vis[..., 0] = 2.0  # a point source of flux 2 at the phase centre
    vis[0, -5:] = 1e6  # invalid entries: left out
    physics = {"uv": uv, "vis": vis, "amp_mask": mask, "flux_scale": torch.tensor([0.02])}
    recon = torch.rand(2, 1, 32, 32, generator=g)
    result = {"recon": recon, "observation": torch.zeros(1, 3), "physics": physics}
    style = field_style(cfg.problem)
    panels = item_panels(style, result, None, cfg.problem)
    assert [p.title for p in panels] == [
        "dirty image", "sample 1 of 2", "sample 2 of 2", "mean of 2", "std of 2",
    ]  # fmt: skip
    dirty = panels[0].image / style.scale
    assert dirty.max() <= 2.0 + 1e-9 and dirty[15:17, 15:17].min() > 1.9  # peak at the centre
    paths = save_item_figures(tmp_path, 0, result, cfg.problem)
    assert sorted(p.name for p in paths) == ["item_0.png", "item_0_recon.fits", "item_0_std.fits"]
    from astropy.io import fits

    with fits.open(paths[1]) as hdul:  # Jy per pixel with the item's own flux scale
        np.testing.assert_allclose(hdul[0].data[::-1], 0.02 * recon[:, 0].double().mean(0))
