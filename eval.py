"""Evaluators: per-item metrics in physical units, aggregated once.

``evaluator(pred, target, observation)`` receives one test item: ``pred`` (N, C, H, W) samples and
``target`` (1, C, H, W), both unnormalized, and the item's ``Observation``. It returns the item's
metric values and keeps them; ``compute()`` gives ``{name: mean, name_std: std}`` over the items.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import ClassVar

import numpy as np
import torch

from utils.compat import check_compat
from utils.metrics import random_directions, sliced_wasserstein


def piq_per_sample(fn, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``fn(pred, target, data_range=1, reduction='none')`` (a piq metric) per sample, NaN for
    samples with non-finite values (piq rejects them; the harness counts such samples in its
    ``nonfinite`` column) instead of failing the whole item."""
    finite = torch.isfinite(pred.flatten(1)).all(1)
    out = torch.full((pred.shape[0],), float("nan"), dtype=torch.float64)
    if bool(finite.any()):
        values = fn(pred[finite], target[finite], data_range=1.0, reduction="none")
        out[finite] = values.to(torch.float64)
    return out


class Evaluator:
    """``compat``: ``reference`` (InverseBench's metrics, quirks included) or ``corrected``
    (utils/compat.py, docs/deviations.md).

    ``reference_names`` maps a metric's name here to the reference's key for it: both are
    reported, in both modes, so tools and sweep files written for the reference find their keys
    (e.g. ``relative l2`` beside ``relative_l2``)."""

    reference_names: ClassVar[dict[str, str]] = {}

    def __init__(self, forward_op=None, compat: str = "corrected"):
        self.forward_op = forward_op
        self.compat = check_compat(compat, f"{type(self).__name__} compat")
        self.metric_state: dict[str, list[float]] = defaultdict(list)

    def evaluate(self, pred, target, observation=None) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, pred, target, observation=None) -> dict[str, float]:
        values = {k: float(v) for k, v in self.evaluate(pred, target, observation).items()}
        for ours, theirs in self.reference_names.items():
            if ours in values:
                values[theirs] = values[ours]
        for k, v in values.items():
            self.metric_state[k].append(v)
        return values

    def compute(self) -> dict[str, float]:
        out = {}
        for k, vals in self.metric_state.items():
            arr = np.asarray(vals, dtype=np.float64)
            out[k] = float(arr.mean())
            out[f"{k}_std"] = float(arr.std())
        return out


def dense_matrix(forward_op, observation, shape) -> torch.Tensor:
    """The matrix of a linear operator for one item, by applying it to the standard basis."""
    d = int(np.prod(shape))
    eye = torch.eye(d, dtype=torch.float64, device=observation.y.device).reshape(d, *shape)
    with torch.no_grad():
        cols = forward_op.forward(eye, **observation.physics)  # (d, m)
    return cols.reshape(d, -1).T


class ExactPosterior(Evaluator):
    """Compares samples with the exact posterior of a linear-Gaussian problem under a closed-form
    prior (``distribution``: utils/distributions.py).

    Metrics (choose with ``metrics``):
      * ``sw``: sliced Wasserstein-1 to ``num_reference`` exact posterior samples, averaged over
        ``num_projections`` fixed random directions (seeded);
      * ``mode_tv``: total variation between the mass per mixture component of the samples
        (each sample assigned to its most responsible posterior component) and the exact posterior
        weights;
      * ``mean_rel_err`` / ``std_rel_err``: relative L2 error of the sample mean / pixelwise
        standard deviation against the exact ones;
      * ``mean_err_std``: L2 error of the sample mean relative to the exact pixelwise standard
        deviation's L2 norm (in posterior spreads: n exact samples give about 1/sqrt(n); stable
        where the posterior mean is near 0).
    """

    known = ("sw", "mode_tv", "mean_rel_err", "std_rel_err", "mean_err_std")

    def __init__(
        self,
        distribution,
        forward_op=None,
        metrics=("sw", "mode_tv"),
        num_reference: int = 10_000,
        num_projections: int = 256,
        seed: int = 0,
        compat: str = "corrected",
    ):
        super().__init__(forward_op, compat)
        unknown = set(metrics) - set(self.known)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {self.known}")
        self.prior = (
            distribution.to_mixture() if hasattr(distribution, "to_mixture") else (distribution)
        )
        self.metrics = tuple(metrics)
        self.num_reference = int(num_reference)
        self.seed = int(seed)
        self.directions = random_directions(num_projections, self.prior.dim, seed)

    def posterior(self, observation, shape):
        A = dense_matrix(self.forward_op, observation, shape)
        var = self.forward_op.noise_std(observation.physics, 1).to(torch.float64).square()
        prior = self.prior.to(observation.y.device)
        return prior.posterior(A, var, observation.y.reshape(-1).to(torch.float64))

    def evaluate(self, pred, target, observation=None):
        post = self.posterior(observation, pred.shape[1:])
        x = pred.reshape(pred.shape[0], -1).to(torch.float64)
        x = x[torch.isfinite(x).all(1)]  # the harness counts the others in its nonfinite column
        if x.shape[0] == 0:
            return {name: float("nan") for name in self.metrics}
        out = {}
        if "sw" in self.metrics:
            g = torch.Generator().manual_seed(self.seed)
            ref = post.sample(self.num_reference, g)
            out["sw"] = sliced_wasserstein(x, ref, self.directions)
        if "mode_tv" in self.metrics:
            k = post.responsibilities(x).argmax(1)
            mass = torch.bincount(k, minlength=post.num_components).double() / x.shape[0]
            out["mode_tv"] = 0.5 * float((mass - post.weights.cpu()).abs().sum())
        if {"mean_rel_err", "std_rel_err", "mean_err_std"} & set(self.metrics):
            mean, std = mixture_moments(post)
            if "mean_rel_err" in self.metrics:
                out["mean_rel_err"] = float((x.mean(0) - mean).norm() / mean.norm())
            if "mean_err_std" in self.metrics:
                out["mean_err_std"] = float((x.mean(0) - mean).norm() / std.norm())
            if "std_rel_err" in self.metrics:
                s = x.std(0) if x.shape[0] > 1 else torch.zeros_like(std)
                out["std_rel_err"] = float((s - std).norm() / std.norm())
        return out


def mixture_moments(mix):
    """Mean and per-coordinate standard deviation of a Gaussian mixture."""
    mean = mix.weights @ mix.means
    var_k = torch.diagonal(mix.covs, dim1=-2, dim2=-1)  # (K', d)
    second = mix.weights @ (var_k.expand_as(mix.means) + mix.means.square())
    return mean, (second - mean.square()).clamp_min(0).sqrt()


class NavierStokes2d(Evaluator):
    """Relative L2 error ||pred - target|| / ||target|| per sample, averaged over the samples
    (the reference's metric for the Navier–Stokes problem)."""

    reference_names: ClassVar[dict[str, str]] = {"relative_l2": "relative l2"}

    def evaluate(self, pred, target, observation=None):
        err = (pred - target).flatten(1).norm(dim=1) / target.flatten().norm()
        return {"relative_l2": float(err.mean())}


class InverseScatter(Evaluator):
    """PSNR and SSIM (piq, data range 1) of the permittivity clipped to [0, 1], per sample and
    averaged over the item's samples (the reference's metrics for inverse scattering)."""

    def evaluate(self, pred, target, observation=None):
        import piq

        p = pred.to(torch.float32).clamp(0, 1)
        t = target.to(torch.float32).clamp(0, 1).expand_as(p)
        psnr = piq_per_sample(piq.psnr, p, t)
        ssim = piq_per_sample(piq.ssim, p, t)
        return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


class AcousticWave(Evaluator):
    """The reference's FWI metrics on velocities in km/s, per sample and averaged over the item's
    samples: relative L2 ||v_hat - v|| / ||v||, PSNR and SSIM (piq, data range 1) of
    clip((v - 1.5) / 3, 0, 1), and with ``data_misfit`` (and an operator and observation) the
    reference's misfit sqrt(1/2 ||A(v_hat) - y||^2) -- one more forward solve per sample."""

    reference_names: ClassVar[dict[str, str]] = {
        "relative_l2": "relative l2",
        "data_misfit": "data misfit",
    }

    def __init__(self, forward_op=None, data_misfit: bool = False, compat: str = "corrected"):
        super().__init__(forward_op, compat)
        self.data_misfit = bool(data_misfit)

    def evaluate(self, pred, target, observation=None):
        import piq

        pred, target = pred.to(torch.float64), target.to(torch.float64)
        err = (pred - target).flatten(1).norm(dim=1) / target.flatten().norm()
        p = ((pred - 1.5) / 3.0).clamp(0, 1).float()
        t = ((target - 1.5) / 3.0).clamp(0, 1).float().expand_as(p)
        out = {
            "relative_l2": float(err.mean()),
            "psnr": float(piq_per_sample(piq.psnr, p, t).mean()),
            "ssim": float(piq_per_sample(piq.ssim, p, t).mean()),
        }
        if self.data_misfit and self.forward_op is not None and observation is not None:
            misfit = torch.full((pred.shape[0],), float("nan"), dtype=torch.float64)
            flat = pred.flatten(1)
            vmax = getattr(self.forward_op, "max_velocity", float("inf"))
            ok = torch.isfinite(flat).all(1) & (flat.amin(1) > 0) & (flat.amax(1) <= vmax)
            if bool(ok.any()):
                with torch.no_grad():
                    d = self.forward_op.forward(self.forward_op.normalize(pred[ok]).float())
                r = d.to(torch.float64) - observation.y.to(d.device, torch.float64)
                misfit[ok] = (0.5 * r.square().flatten(1).sum(1)).sqrt().cpu()
            out["data_misfit"] = float(misfit.mean())
        return out


class MRI(Evaluator):
    """The reference's MRI metrics, per sample and averaged over the item's samples (for every
    number of samples; the reference's batching returns 0 for 1 < N < 32): PSNR and SSIM of
    magnitude images with the prediction clipped to [0, max target] and data range max target
    (piq, float64), and the data misfit when the operator and observation are given: the mean
    over samples of ||A(x_hat) - y||_2 (``compat='corrected'``), or the reference's one norm of
    all N samples' residuals together, sqrt(sum_n ||A(x_hat_n) - y||^2)
    (``compat='reference'``; the same for N = 1)."""

    reference_names: ClassVar[dict[str, str]] = {"data_misfit": "data misfit"}

    def _observed(self, pred, observation) -> dict:
        """Measured k-space without a reference (``target`` None): ``data_misfit`` as above and
        ``relative_misfit`` = mean over samples of ||A(x_hat) - y|| / ||y||. No poor-fit verdict:
        the data's noise level is not known here."""
        if self.forward_op is None or observation is None:
            raise ValueError("MRI evaluation without a target needs the operator and observation")
        with torch.no_grad():
            m = self.forward_op.forward(pred.to(torch.float64), **observation.physics)
        misfit = (m - observation.y.to(m.dtype)).flatten(1).norm(dim=1)
        joint = self.compat == "reference"
        return {
            "data_misfit": float(misfit.norm() if joint else misfit.mean()),
            "relative_misfit": float((misfit / observation.y.flatten().norm()).mean()),
        }

    def evaluate(self, pred, target, observation=None):
        import piq

        if target is None:  # measured data: the fit to the data alone
            return self._observed(pred, observation)

        def magnitude(z):
            z = z.to(torch.float64)
            return z.square().sum(1, keepdim=True).sqrt()

        t = magnitude(target)
        top = float(t.max())
        p = magnitude(pred).clamp(0, top) / top
        t = (t / top).expand_as(p)
        out = {
            "psnr": float(piq_per_sample(piq.psnr, p, t).mean()),
            "ssim": float(piq_per_sample(piq.ssim, p, t).mean()),
        }
        if self.forward_op is not None and observation is not None:
            with torch.no_grad():
                m = self.forward_op.forward(pred.to(torch.float64), **observation.physics)
            misfit = (m - observation.y.to(m.dtype)).flatten(1).norm(dim=1)
            joint = self.compat == "reference"
            out["data_misfit"] = float(misfit.norm() if joint else misfit.mean())
        return out


def shift_image(img: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Images (N, H, W) translated by (dy, dx) pixels each (N,), sub-pixel, by a Fourier phase
    ramp (periodic boundary: the emission sits well inside the field)."""
    H, W = img.shape[-2:]
    ky = torch.fft.fftfreq(H, dtype=torch.float64, device=img.device)
    kx = torch.fft.fftfreq(W, dtype=torch.float64, device=img.device)
    ramp = torch.exp(
        -2j * math.pi * (dy[:, None, None] * ky[None, :, None] + dx[:, None, None] * kx[None, None])
    )
    return torch.fft.ifft2(torch.fft.fft2(img.to(torch.float64)) * ramp).real


def blur_circular(img: torch.Tensor, fwhm_pixels: float) -> torch.Tensor:
    """Circular Gaussian blur of (N, H, W) images with the given FWHM in pixels (ehtim's
    ``blur_circ``); 0 leaves them unchanged."""
    if fwhm_pixels <= 0:
        return img
    s = fwhm_pixels / (2 * math.sqrt(2 * math.log(2)))
    H, W = img.shape[-2:]
    ky = torch.fft.fftfreq(H, dtype=torch.float64, device=img.device) * 2 * math.pi
    kx = torch.fft.fftfreq(W, dtype=torch.float64, device=img.device) * 2 * math.pi
    kernel = torch.exp(-0.5 * s**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(img.to(torch.float64)) * kernel).real


class BlackHole(Evaluator):
    """The reference's black-hole metrics, per sample, reported as best over the item's samples
    (the reference's choice: ``chi2_*`` the min, ``psnr*`` the max) and as the mean over samples
    (``*_mean``):

    * ``chi2_cp`` / ``chi2_logcamp``: reduced chi^2 of closure phases and log closure amplitudes
      of the sample rescaled to the observed total flux, mapped to max(chi2, 1 / chi2) so that 1
      is best;
    * ``psnr``: PSNR (data range: the target's peak) after the sub-pixel translation that
      maximizes it, searched on a ``shift_steps`` x ``shift_steps`` grid over +-``max_shift`` of
      the field (the reference: 30 x 30 over +-1/4);
    * ``blur_psnr_<f>``: the same aligned images both blurred by a circular Gaussian of FWHM f uas
      for f in ``blur_uas`` (10, 15, 20), correctly labelled (the reference's labels are shifted
      by one: its "f=10" is unblurred).

    ``compat='reference'``: the PSNRs are InverseBench's (``_reference_psnr``): images clipped to
    [0, 1], data range 1, the 30 x 30 bilinear shift grid without a zero shift, ehtim's blur; the
    labels stay correct (its "f=10" is the unblurred value: fixed in both modes). The chi^2 are
    the same code in both modes (the operator's closure sets differ); docs/deviations.md.
    """

    reference_names: ClassVar[dict[str, str]] = {
        "chi2_cp": "cp_chi2",
        "chi2_logcamp": "camp_chi2",
        "blur_psnr_10": "blur_psnr (f=10)",
        "blur_psnr_15": "blur_psnr (f=15)",
        "blur_psnr_20": "blur_psnr (f=20)",
    }

    def __init__(
        self,
        forward_op=None,
        blur_uas=(10.0, 15.0, 20.0),
        shift_steps: int = 30,
        max_shift: float = 0.25,
        pixel_uas: float | None = None,
        compat: str = "corrected",
    ):
        """``pixel_uas``: pixel size in micro-arcseconds for the blurs; taken from the operator
        when one is given."""
        super().__init__(forward_op, compat)
        if forward_op is not None:
            pixel_uas = forward_op.psize / (math.pi / 180 / 3600 / 1e6)
        if pixel_uas is None:
            raise ValueError("BlackHole evaluator needs the operator or pixel_uas for its blurs")
        self.pixel_uas = float(pixel_uas)
        self.blur_uas = tuple(float(f) for f in blur_uas)
        self.shift_steps, self.max_shift = int(shift_steps), float(max_shift)

    def _aligned(self, pred: torch.Tensor, target: torch.Tensor):
        """Each sample translated to maximize its PSNR against the target: the best of a coarse
        grid, then of a 9 x 9 grid over +-1 coarse step around it (sub-pixel)."""
        N, H, W = pred.shape
        step = 2 * self.max_shift * H / max(self.shift_steps - 1, 1)
        coarse = torch.linspace(-self.max_shift, self.max_shift, self.shift_steps) * H
        coarse = torch.cat([coarse, torch.zeros(1)])  # no shift is always a candidate
        fine = torch.linspace(-step, step, 9)
        best = pred.clone()
        for i in range(N):
            centre = torch.zeros(2, dtype=torch.float64)
            for offsets in (coarse, fine):
                dy, dx = torch.meshgrid(offsets.double(), offsets.double(), indexing="ij")
                dy, dx = dy.flatten() + centre[0], dx.flatten() + centre[1]
                moved = shift_image(pred[i].expand(len(dy), H, W), dy, dx)
                k = int((moved - target).square().flatten(1).mean(1).argmin())
                centre = torch.stack([dy[k], dx[k]])
                best[i] = moved[k]
        return best

    #: the reference's shift search: ``steps`` x ``steps`` translations over +-``half_range`` in
    #: grid_sample's normalized coordinates (+-1 = the outer pixel centres)
    reference_shift_grid: ClassVar[dict] = {"steps": 30, "half_range": 0.5}

    def _reference_psnr(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        """InverseBench's ``evaluate_psnr`` (float32, as it computes) with correct labels, per
        sample: both images clipped to [0, 1]; each sample translated by each shift of a
        30 x 30 grid over +-0.5 normalized units (``affine_grid`` / bilinear ``grid_sample``
        with zero padding, align_corners=True: steps of 1/29, i.e. 1.09 px at 64^2, and no
        zero shift, so even the truth is moved by 0.54 px and scores ~27 dB) and clipped again;
        the shift of highest PSNR (piq, data range 1, mse + 1e-8) is kept. The blurred PSNRs
        blur both clipped images with ehtim's ``blur_circ`` (a scipy Gaussian filter, reflecting
        edges, sigma = FWHM / (2 sqrt(2 ln 2)) in pixels) and clip again."""
        import torch.nn.functional as F
        from piq import psnr
        from scipy.ndimage import gaussian_filter

        t = target.to(torch.float32).clip(0, 1)[None]  # (1, 1, H, W)
        N, H, W = pred.shape
        steps, half = self.reference_shift_grid["steps"], self.reference_shift_grid["half_range"]
        offsets = torch.linspace(-half, half, steps)
        tx, ty = (g.flatten() for g in torch.meshgrid(offsets, offsets, indexing="ij"))
        theta = torch.zeros(len(tx), 2, 3)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = 1, 1, tx, ty
        grid = F.affine_grid(theta, [len(tx), 1, H, W], align_corners=True)
        aligned = torch.empty(N, 1, H, W)
        for i in range(N):
            image = pred[i].to(torch.float32).clip(0, 1).expand(len(tx), 1, H, W)
            moved = F.grid_sample(image, grid, align_corners=True).clip(0, 1)
            scores = psnr(t.expand_as(moved), moved, data_range=1.0, reduction="none")
            aligned[i] = moved[int(scores.max(dim=0)[1])]
        target_n = t.expand(N, 1, H, W)
        out = {"psnr": psnr(target_n, aligned, data_range=1.0, reduction="none")}

        def blur(images, fwhm_pixels):
            sigma = fwhm_pixels / (2.0 * np.sqrt(2.0 * np.log(2.0)))
            arr = images.clip(0, 1).numpy()
            blurred = np.stack([gaussian_filter(a[0], (sigma, sigma)) for a in arr])[:, None]
            return torch.from_numpy(blurred.astype(np.float32)).clip(0, 1)

        for f in self.blur_uas:
            pix = f / self.pixel_uas
            out[f"blur_psnr_{f:g}"] = psnr(
                blur(target_n, pix), blur(aligned, pix), data_range=1.0, reduction="none"
            )
        return {k: v.to(torch.float64) for k, v in out.items()}

    #: a result whose mean reduced closure chi^2 (phases or log amplitudes) over its samples
    #: exceeds this did not fit its data (``poor_fit``): thermal noise alone keeps a fitted
    #: image near 1 (+-0.1 for a few hundred closures), EHT data with non-closing systematics
    #: at 1-2; the issue's unfitted rings had 7-9
    poor_fit_chi2: ClassVar[float] = 3.0

    def _chi2(self, p: torch.Tensor, observation) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced closure-phase and log-closure-amplitude chi^2 per sample of images p (N, H,
        W) rescaled to the observed total flux."""
        op = self.forward_op
        flux_y = op.split(observation.y, observation.physics)[3].reshape(-1)[0]
        scaled = p * (flux_y / p.flatten(1).sum(1).clamp_min(1e-30))[:, None, None]
        with torch.no_grad():
            m = op.forward(op.normalize(scaled[:, None]), **observation.physics)
        _, chi_cp, chi_lca, _ = op.chi2_terms(m, observation)
        return chi_cp, chi_lca

    def _observed(self, pred, observation) -> dict:
        """Measured data (no target): the fit to the data and the ring's geometry.

        * ``chi2_cp`` / ``chi2_logcamp``: the reduced chi^2 (plain: 1 is a fit to the noise,
          larger is worse) of the best sample, and (``*_mean``) the mean over samples, the
          figure ``poor_fit`` reads;
        * ``poor_fit``: 1 where the mean chi^2 of either exceeds ``poor_fit_chi2``;
        * ``ring_diameter`` / ``ring_width`` (uas), ``ring_orientation`` (deg east of north,
          circular mean) and ``ring_asymmetry``: REx ring fits per sample
          (``utils.ringfit``), mean and spread over samples (``*_spread``; circular for the
          orientation)."""
        from utils.ringfit import circular_mean_deg, circular_spread_deg, fit_ring

        p = pred[:, 0].to(torch.float64)
        out = {}
        if self.forward_op is not None and observation is not None:
            chi_cp, chi_lca = self._chi2(p, observation)
            for name, chi in (("chi2_cp", chi_cp), ("chi2_logcamp", chi_lca)):
                out[name], out[f"{name}_mean"] = float(chi.min()), float(chi.mean())
            worst = max(out["chi2_cp_mean"], out["chi2_logcamp_mean"])
            out["poor_fit"] = float(worst > self.poor_fit_chi2)
        fits = []
        for img in p.cpu().numpy():
            try:
                fits.append(fit_ring(img, self.pixel_uas))
            except ValueError:  # an empty or non-finite sample has no ring
                continue
        if fits:
            for key, attr in (
                ("ring_diameter", "diameter_uas"),
                ("ring_width", "width_uas"),
                ("ring_asymmetry", "asymmetry"),
            ):
                vals = np.asarray([getattr(f, attr) for f in fits])
                out[key], out[f"{key}_spread"] = float(vals.mean()), float(vals.std())
            angles = [f.orientation_deg for f in fits]
            out["ring_orientation"] = circular_mean_deg(angles)
            out["ring_orientation_spread"] = circular_spread_deg(angles)
        return out

    def evaluate(self, pred, target, observation=None):
        if target is None:  # measured data: no truth to compare with
            return self._observed(pred, observation)
        p = pred[:, 0].to(torch.float64)
        t = target[:, 0].to(torch.float64)
        top = float(t.max())

        def psnr(a, b, peak):
            mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-30)
            return 10 * torch.log10(peak**2 / mse)

        if self.compat == "reference":
            scores = self._reference_psnr(pred[:, 0].detach().cpu(), target[0].detach().cpu())
        else:
            aligned = self._aligned(p, t)
            scores = {"psnr": psnr(aligned, t, top)}
            for f in self.blur_uas:
                pix = f / self.pixel_uas
                bt = blur_circular(t, pix)
                scores[f"blur_psnr_{f:g}"] = psnr(blur_circular(aligned, pix), bt, float(bt.max()))
        out = {}
        for k, v in scores.items():
            out[k], out[f"{k}_mean"] = float(v.max()), float(v.mean())
        if self.forward_op is not None and observation is not None:
            chi_cp, chi_lca = self._chi2(p, observation)
            for name, chi in (("chi2_cp", chi_cp), ("chi2_logcamp", chi_lca)):
                chi = torch.maximum(chi, 1 / chi.clamp_min(1e-30))
                out[name], out[f"{name}_mean"] = float(chi.min()), float(chi.mean())
        return out
