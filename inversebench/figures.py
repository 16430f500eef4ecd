"""Pictures of results: per-item panels in physical units, and black-hole FITS images.

``save_item_figures(exp_dir, item_id, result, problem, forward_op=None)`` writes, for one solved
item, ``<exp_dir>/figures/item_<id>.png``: the target, a view of the measurements where one is
meaningful, the reconstruction(s), with several samples their per-pixel mean and standard
deviation, and the error map (mean, or the only sample, minus the target). Each field is shown in
its physical units with a colour bar and its usual colour map:

=================  ====================================  ==============================  ========
problem            field (unit)                          measurement view                cmap
=================  ====================================  ==============================  ========
black hole         intensity (mJy / pixel), axes in uas  dirty image of the visibilities afmhot
multi-coil MRI     magnitude (a.u.)                      zero-filled (adjoint) image     gray
inverse scatter    permittivity contrast, axes in m      --                              viridis
Navier-Stokes      initial vorticity, axes in [0, L]     observed vorticity at time T    RdBu_r
FWI                P-wave velocity (km/s), depth in m    first shot gather (ms)          viridis
=================  ====================================  ==============================  ========

The black-hole images are also written as FITS (``item_<id>_recon.fits``: the reconstruction,
the mean over the samples when there are several; ``_target.fits``; with several samples
``_std.fits``) with the header ehtim's ``Image.save_fits`` writes (pixel size, frequency,
source, position, MJD; Jy per pixel, rows flipped so that FITS row 1 is south),
so ``ehtim.image.load_fits`` and astropy read them back.

The exact problems (gmm, grf: vectors under a closed-form prior, no image) get no figure:
``field_style`` returns None for them.

Only matplotlib's object API (``Figure`` with an Agg canvas) is used: no pyplot, no global
backend or figure state, safe in worker processes without a display.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from utils.io import _atomic_write

RADPERUAS = math.pi / 180.0 / 3600.0 / 1e6
#: M87* (J2000), the EHT 2017 target; the FITS position when the operator does not give one
M87 = {"source": "M87", "ra": 12.513728717, "dec": 12.39112324, "rf": 230e9, "mjd": 57849}


def default_style(fn):
    """Run ``fn`` under matplotlib's default rcParams: figures look the same whatever a library
    imported before changed globally (ehtim sets a serif font on import)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib.style

        with matplotlib.style.context("default"):
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class FieldStyle:
    """How one problem's unknown is drawn: ``scale`` turns the result's units into ``unit``;
    ``magnitude`` takes |x| over the channels (MRI's real and imaginary parts); ``extent`` and
    ``origin`` as in ``imshow`` (physical axes); ``symmetric``: colour scale centred at 0."""

    kind: str
    label: str
    unit: str
    cmap: str
    xlabel: str = "x (pixel)"
    ylabel: str = "y (pixel)"
    extent: tuple[float, float, float, float] | None = None
    origin: str = "upper"
    scale: float = 1.0
    magnitude: bool = False
    symmetric: bool = False
    nonnegative: bool = False

    def values(self, x) -> np.ndarray:
        """(N, H, W) float64 field in ``unit`` from (N, C, H, W) (or (C, H, W)) result tensors."""
        x = torch.as_tensor(x).detach().cpu().to(torch.float64)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
        field = x.square().sum(1).sqrt() if self.magnitude else x[:, 0]
        return field.numpy() * self.scale


def _plain(node) -> dict:
    """A plain dict of a (possibly OmegaConf) mapping."""
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(node)


def field_style(problem, forward_op=None) -> FieldStyle | None:
    """The style of a problem's unknown, from its config (``problem``: the run's ``problem``
    node, with ``model._target_``) and, when given, its operator (which knows e.g. the black hole's
    flux scale read from its ground truth); None for problems that are not images."""
    problem = _plain(problem)
    model = _plain(problem.get("model"))
    target = str(model.get("_target_", "")).rsplit(".", 1)[-1]
    if target == "BlackHoleImaging":
        imsize = int(getattr(forward_op, "imsize", model.get("imsize", 64)))
        if forward_op is not None:
            fov = forward_op.psize * imsize / RADPERUAS
            flux = float(forward_op.flux_scale)
        else:
            fov = float(model.get("fov_uas", 160.0))
            flux = float(model.get("flux_scale", 1.0))
        half = fov / 2
        return FieldStyle(
            "blackhole", "intensity", "mJy / pixel", "afmhot",
            xlabel="relative RA (µas)", ylabel="relative Dec (µas)",
            extent=(half, -half, -half, half), scale=1e3 * flux, nonnegative=True,
        )  # fmt: skip
    if target == "MultiCoilMRI":
        return FieldStyle("mri", "magnitude", "a.u.", "gray", magnitude=True, nonnegative=True)
    if target == "InverseScatter":
        lx, ly = float(model.get("Lx", 0.18)), float(model.get("Ly", 0.18))
        return FieldStyle(
            "permittivity", "permittivity contrast", "1", "viridis",
            xlabel="x (m)", ylabel="y (m)", extent=(-lx / 2, lx / 2, -ly / 2, ly / 2),
            origin="lower",
        )  # fmt: skip
    if target == "ForwardNavierStokes2d":
        L = float(model.get("L", 2 * math.pi))
        return FieldStyle(
            "vorticity", "vorticity", "1 / time unit", "RdBu_r",
            xlabel="x", ylabel="y", extent=(0, L, 0, L), origin="lower", symmetric=True,
        )  # fmt: skip
    if target == "AcousticWave":
        nx, nz = (int(s) for s in model.get("shape", (70, 70)))
        dx, dz = (float(s) for s in model.get("spacing", (10.0, 10.0)))
        return FieldStyle(
            "velocity", "P-wave velocity", "km/s", "viridis",
            xlabel="x (m)", ylabel="depth (m)", extent=(0, nx * dx, nz * dz, 0),
        )  # fmt: skip
    return None


@dataclass(frozen=True)
class Panel:
    """One image of a figure: ``scale`` is 'field' (shared by the target and every estimate),
    'own' (its own range and ``style``), 'std' (from 0) or 'error' (symmetric about 0)."""

    title: str
    image: np.ndarray
    scale: str = "field"
    style: FieldStyle | None = None


def _observation(result) -> tuple[torch.Tensor | None, dict]:
    obs = result.get("observation")
    if obs is None:
        return None, {}
    if hasattr(obs, "y"):
        y, physics = obs.y, obs.physics
    else:
        y, physics = torch.as_tensor(obs), result.get("physics") or {}
    cpu = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in physics.items()}
    return y.detach().cpu(), cpu


def measurement_panel(style: FieldStyle, result, forward_op=None, problem=None) -> Panel | None:
    """A picture of the item's measurements, or None where none is meaningful (or possible
    without the operator): the black hole's dirty image sum_k Re(conj(A_k) V_k) / m of the
    measured visibilities (needs the operator's DFT; with ``eht`` noise the station gains' random
    phases scramble it, as they would for a real array before calibration), MRI's zero-filled
    image sum_c conj(S_c) F^H y_c, Navier-Stokes' observed vorticity,
    FWI's first shot gather."""
    y, physics = _observation(result)
    if y is None:
        return None
    if style.kind == "blackhole":
        dirty = _dirty_image(physics, forward_op, problem)
        if dirty is None:
            return None
        own = replace(style, unit="mJy / beam", nonnegative=False)
        title = "dirty image" + (
            " (uncalibrated)" if getattr(forward_op, "noise_type", "") == "eht" else ""
        )
        return Panel(title, dirty * style.scale, "own", own)
    if style.kind == "mri":
        from inverse_problems.multi_coil_mri import ifft2c

        maps = physics.get("maps")
        if maps is None:
            return None
        k = torch.view_as_complex(y.to(torch.float64).contiguous()).reshape(-1, *maps.shape[-3:])
        img = (ifft2c(k[0]) * maps.reshape(-1, *maps.shape[-3:])[0].conj()).sum(0)
        return Panel("zero-filled", img.abs().numpy(), "own", style)
    if style.kind == "vorticity":
        obs = y.to(torch.float64).reshape(-1, *y.shape[-2:])[0].numpy()
        return Panel("observed (time T)", obs * style.scale, "own", style)
    if style.kind == "velocity":
        model = _plain(_plain(problem).get("model"))
        dt = float(model.get("dt", 1.0))
        gather = y.to(torch.float64).reshape(-1, *y.shape[-2:])[0].numpy()  # (nt, nrec)
        nt, nrec = gather.shape
        own = FieldStyle(
            "traces", "pressure", "a.u.", "gray", xlabel="receiver", ylabel="time (ms)",
            extent=(0, nrec, nt * dt, 0), symmetric=True,
        )  # fmt: skip
        return Panel("shot gather 1", gather, "own", own)
    return None


def _blackhole_grid(forward_op=None, problem=None) -> tuple[int, float]:
    """Pixels per side and pixel size (rad) of a black-hole problem's image grid."""
    if forward_op is not None:
        return int(forward_op.imsize), float(forward_op.psize)
    model = _plain(_plain(problem).get("model"))
    n = int(model.get("imsize", 64))
    return n, float(model.get("fov_uas", 160.0)) * RADPERUAS / n


def _dirty_image(physics: dict, forward_op=None, problem=None) -> np.ndarray | None:
    """sum_k Re(conj(A_k) V_k) / m over the item's measured visibilities ``vis`` (image units)
    -- on its own (u, v) for measured items (``uv``, valid entries ``amp_mask``), else on the
    operator's coverage (its DFT); None when neither is at hand."""
    if "vis" not in physics:
        return None
    vis = physics["vis"].to(torch.float64).reshape(-1, 2)
    vis = torch.complex(vis[:, 0], vis[:, 1])
    valid = physics.get("amp_mask")
    valid = torch.ones(len(vis), dtype=torch.bool) if valid is None else valid.reshape(-1).bool()
    if "uv" in physics:
        from inverse_problems.eht import dft_matrix

        n, psize = _blackhole_grid(forward_op, problem)
        uv = physics["uv"].to(torch.float64).reshape(-1, 2)[valid]
        A = dft_matrix(uv[:, 0], uv[:, 1], n, psize)  # (m, n^2)
        dirty = (A.conj().T @ vis[valid]).real / int(valid.sum())
        return dirty.reshape(n, n).numpy()
    dft = getattr(forward_op, "dft", None)  # (n^2, 2m): [Re A; Im A]^T
    if dft is None or dft.shape[1] != 2 * len(vis):
        return None
    n = math.isqrt(dft.shape[0])
    ri = torch.cat([vis.real, vis.imag])
    return ((dft.detach().cpu().to(torch.float64) @ ri) / len(vis)).reshape(n, n).numpy()


def item_panels(
    style: FieldStyle, result, forward_op=None, problem=None, max_samples: int = 3
) -> list[Panel]:
    """The panels of one item: target, measurements, up to ``max_samples`` samples, with
    several samples the mean and standard deviation, and the error of the mean (or sample); no
    target and no error for measured data (no ``target``)."""
    recon = style.values(result["recon"])
    target = None if result.get("target") is None else style.values(result["target"])[0]
    panels = [] if target is None else [Panel("target", target)]
    meas = measurement_panel(style, result, forward_op, problem)
    if meas is not None:
        panels.append(meas)
    n = recon.shape[0]
    for i in range(min(n, max_samples)):
        panels.append(Panel("reconstruction" if n == 1 else f"sample {i + 1} of {n}", recon[i]))
    if n > 1:
        estimate = recon.mean(0)
        panels.append(Panel(f"mean of {n}", estimate))
        panels.append(Panel(f"std of {n}", recon.std(0), "std"))
    else:
        estimate = recon[0]
    if target is not None:  # measured data have no truth
        panels.append(Panel("mean - target" if n > 1 else "error", estimate - target, "error"))
    return panels


def _limits(panel: Panel, style: FieldStyle, field_range: tuple[float, float]):
    finite = panel.image[np.isfinite(panel.image)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    top = top if top > 0 else 1.0
    if panel.scale == "error":
        return -top, top, "RdBu_r"
    if panel.scale == "std":
        return 0.0, top, "magma"
    if panel.scale == "own":
        s = panel.style or style
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if s.symmetric:
            top = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 1.0
            return -top, top, s.cmap
        return (0.0 if s.nonnegative else lo), hi, s.cmap
    return (*field_range, style.cmap)


@default_style
def draw_panels(panels: list[Panel], style: FieldStyle, title: str | None = None, size=2.9):
    """A one-row matplotlib ``Figure`` of ``panels`` with a colour bar each."""
    from matplotlib.figure import Figure

    fields = [p.image for p in panels if p.scale == "field"]
    values = np.concatenate([f[np.isfinite(f)].ravel() for f in fields]) if fields else []
    if len(values) == 0:
        field_range = (0.0, 1.0)
    elif style.symmetric:
        top = float(np.abs(values).max()) or 1.0
        field_range = (-top, top)
    else:
        field_range = (0.0 if style.nonnegative else float(values.min()), float(values.max()))
    fig = Figure(figsize=(size * 1.25 * len(panels), size + 0.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        s = panel.style or style
        lo, hi, cmap = _limits(panel, style, field_range)
        im = ax.imshow(
            panel.image, cmap=cmap, vmin=lo, vmax=hi, extent=s.extent, origin=s.origin,
            interpolation="nearest", aspect="auto" if s.kind == "traces" else "equal",
        )  # fmt: skip
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(s.xlabel, fontsize=8)
        ax.set_ylabel(s.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        bar.set_label(
            f"{s.label} ({s.unit})" if panel.scale != "error" else f"Δ ({s.unit})", fontsize=7
        )
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@default_style
def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a ``Figure`` (PNG, or the format of the suffix) atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fmt = Path(path).suffix.lstrip(".") or "png"
    _atomic_write(Path(path), lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return Path(path)


def fits_header_values(forward_op=None, problem=None) -> dict:
    """Pixel size (rad), frequency (Hz), source, RA (h), Dec (deg), MJD and flux scale
    (Jy per image unit) of a black-hole problem: from the operator (its uv coverage's source)
    or, without one, from the config and the EHT 2017 M87* defaults."""
    model = _plain(_plain(problem).get("model"))
    out = dict(M87)
    if forward_op is not None:
        src = dict(getattr(getattr(forward_op, "coverage", None), "source", {}) or {})
        out.update({k: src[k] for k in ("ra", "dec", "rf", "mjd") if k in src})
        out["psize"] = float(forward_op.psize)
        out["flux_scale"] = float(forward_op.flux_scale)
    else:
        imsize = int(model.get("imsize", 64))
        out["psize"] = float(model.get("fov_uas", 160.0)) * RADPERUAS / imsize
        out["flux_scale"] = float(model.get("flux_scale", 1.0))
    return out


def write_fits(
    path,
    image,
    psize: float,
    rf: float = M87["rf"],
    source: str = M87["source"],
    ra: float = M87["ra"],
    dec: float = M87["dec"],
    mjd: float = M87["mjd"],
) -> Path:
    """A Stokes I image (H, W) in Jy per pixel, rows top (north) to bottom and RA decreasing to
    the right (ehtim's ``imvec`` order), as the FITS ``ehtim.Image.save_fits`` writes: the same
    header keys (OBJECT, CTYPE, CDELT in degrees with RA negative, OBSRA in degrees, OBSDEC,
    FREQ, CRPIX at the centre, MJD, TELESCOP, BUNIT = JY/PIXEL, STOKES) and the y axis flipped.
    ``psize`` in radians, ``rf`` in Hz, ``ra`` in hours, ``dec`` in degrees."""
    from astropy.io import fits

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"write_fits needs one (H, W) image, got shape {image.shape}")
    degree = math.pi / 180.0
    header = fits.Header()
    header["OBJECT"] = str(source)
    header["CTYPE1"] = "RA---SIN"
    header["CTYPE2"] = "DEC--SIN"
    header["CDELT1"] = -psize / degree
    header["CDELT2"] = psize / degree
    header["OBSRA"] = ra * 180 / 12.0
    header["OBSDEC"] = float(dec)
    header["FREQ"] = float(rf)
    header["CRPIX1"] = image.shape[1] / 2.0 + 0.5
    header["CRPIX2"] = image.shape[0] / 2.0 + 0.5
    header["MJD"] = float(mjd)
    header["TELESCOP"] = "VLBI"
    header["BUNIT"] = "JY/PIXEL"
    header["STOKES"] = "I"
    hdu = fits.PrimaryHDU(np.ascontiguousarray(image[::-1, :]), header=header)
    _atomic_write(Path(path), lambda f: fits.HDUList([hdu]).writeto(f))
    return Path(path)


def save_item_figures(
    exp_dir,
    item_id: int,
    result: Mapping,
    problem,
    forward_op=None,
    max_samples: int = 3,
    fits: bool = True,
    label: str | None = None,
) -> list[Path]:
    """Write the item's panel (``<exp_dir>/figures/item_<id>.png``) and, for black-hole images
    with ``fits``, its FITS images; returns the paths written (none for non-image problems).

    ``result``: ``recon`` (N, C, H, W) and ``target`` (1, C, H, W) in physical units and
    ``observation`` (an ``Observation``, or the measurement tensor with ``physics`` beside it),
    as ``utils.results.load_result`` returns them. ``problem``: the run's problem config.
    ``forward_op`` (optional) gives what the config does not: the black hole's DFT (dirty
    image), pixel size, flux scale and coverage (FITS header). ``label``: the method, for the
    figure's title (e.g. the algorithm's name)."""
    style = field_style(problem, forward_op)
    if style is None:
        return []
    _, physics = _observation(result)
    if style.kind == "blackhole" and "flux_scale" in physics:  # a measured item's own scale
        style = replace(style, scale=1e3 * float(physics["flux_scale"].reshape(-1)[0]))
    out = Path(exp_dir) / "figures"
    name = " / ".join(str(t) for t in (_plain(problem).get("name"), label) if t)
    n = int(torch.as_tensor(result["recon"]).shape[0])
    panels = item_panels(style, result, forward_op, problem, max_samples)
    fig = draw_panels(
        panels, style, f"{name} item {item_id}" + (f" ({n} samples)" if n > 1 else "")
    )
    paths = [save_figure(fig, out / f"item_{item_id}.png")]
    if fits and style.kind == "blackhole":
        head = fits_header_values(forward_op, problem)
        if isinstance(physics.get("source"), str):
            head["source"] = physics["source"]
        jy = style.values(result["recon"]) / 1e3  # Jy per pixel
        kw = {k: head[k] for k in ("rf", "source", "ra", "dec", "mjd")}
        paths.append(
            write_fits(out / f"item_{item_id}_recon.fits", jy.mean(0), head["psize"], **kw)
        )
        if result.get("target") is not None:
            target = style.values(result["target"])[0] / 1e3
            path = out / f"item_{item_id}_target.fits"
            paths.append(write_fits(path, target, head["psize"], **kw))
        if n > 1:
            paths.append(
                write_fits(out / f"item_{item_id}_std.fits", jy.std(0), head["psize"], **kw)
            )
    return paths
