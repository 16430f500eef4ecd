"""Black-hole imaging from EHT closure quantities (InverseBench's ``BlackHoleImaging``; Chael et
al., ApJ 857, 2018, for closure-only imaging).

The unknown is a 64 x 64 (``imsize``) image of total intensity on a ``fov_uas`` field of view,
normalized to [-1, 1] (image = (x + ``unnorm_shift``) * ``unnorm_scale`` in units of
``flux_scale`` Jy per pixel; the reference's ``multiplier``, the peak of its ground-truth image).
The forward model, batched and differentiable (autograd), in float64:

    visibilities  V = A image                 (exact DFT, inverse_problems/eht.py; (R, m) complex)
    amplitudes    |V|                         (m)
    closure phases        psi = sum_k s_k arg V_k over minimal triangles          (c)
    log closure amplitudes      sum_k s_k log |V_k| over minimal quadrangles       (l)
    total flux    sum image                   (1)

packed as one real vector (R, m + c + l + 1) in that order. Noise σ's in image units travel with
the observation (``sigma_amp`` (m), ``sigma_cp`` (c) and ``sigma_lca`` (l) per item), propagated
from the visibility noise as ehtim does: sigma_cp = sigma_lca = sqrt(sum_k (sigma_k / |V_k|)^2)
with the observed amplitudes.

Noise models (``noise_type``), every draw from the item's own stream (the reference's ``eht``
noise uses numpy's unseeded global RNG):

* ``gaussian``: Gaussian noise added to amplitudes, closure phases and log closure amplitudes;
* ``vis_thermal``: Gaussian thermal noise of std sigma on the real and on the imaginary part of
  each visibility (ehtim's convention for its ``sigma``);
* ``eht``: thermal noise plus station gains per scan (time stamp): amplitude
  1 + ``gain_std`` N(0, 1) and a uniform random phase per station -- visibility amplitudes are
  corrupted, closures are not; the flux is the median |V| on the ALMA-APEX baseline, as the
  reference.

Loss (the reference's): 2 (w1 m chi2_amp + w2 c chi2_cp + w3 l chi2_lca + w4 chi2_flux) with
chi2_cp = (2/c) sum (1 - cos(psi - psi_hat)) / sigma_cp^2, chi2_lca and chi2_amp the mean squared
normalized residuals and chi2_flux = mean(((F_hat - F) / 2)^2).

``compat='reference'`` gives InverseBench's numbers (tests/test_parity_blackhole.py): ehtim's
minimal closure sets (a reference station per time stamp; ``eht.ehtim_closure_sets``) instead of
the best-conditioned ones -- the diagonal chi^2 depends on the set, so the loss and chi2_logcamp
differ between the modes -- ehtim's ``observe_same`` noise for ``eht`` (``_ehtim_noise``) and
unwrapped noisy closure phases for ``gaussian`` (docs/deviations.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from inverse_problems.base import BaseOperator, Observation, group_rows
from inverse_problems.eht import (
    RADPERUAS,
    UVCoverage,
    closure_sets,
    dft_matrix,
    ehtim_closure_sets,
    read_uvfits,
    simulate_coverage,
    triangle_pulse,
)

NOISE_TYPES = ("gaussian", "vis_thermal", "eht")


class BlackHoleImaging(BaseOperator):
    capabilities = frozenset({"gradient"})

    def __init__(
        self,
        root: str | None = None,
        array_file: str = "data/eht/EHT2017_m87.txt",
        observation_time_ratio: float = 1.0,
        noise_type: str = "vis_thermal",
        ttype: str = "direct",
        imsize: int = 64,
        fov_uas: float = 160.0,
        flux_scale: float = 1.0,
        w1: float = 0.0,
        w2: float = 1.0,
        w3: float = 1.0,
        w4: float = 0.5,
        gain_std: float = 0.1,
        sigma_noise: float = 0.0,
        unnorm_shift: float = 1.0,
        unnorm_scale: float = 0.5,
        ref_flux: float | None = None,
        coverage: dict | None = None,
        prior_grid: dict | None = None,
        observed_image_flux: float = 48.0,
        total_flux_jy: float | None = None,
        device="cpu",
        compat: str = "corrected",
    ):
        """``root``: a folder with the reference's ``obs.uvfits`` (uv coverage and sigmas) and
        ``gt.fits`` (regridded to ``imsize`` pixels on its own field of view, as the reference
        does: its field of view replaces ``fov_uas`` and its peak sets ``flux_scale``); without
        it the coverage is simulated with ehtim from ``array_file`` (``coverage``: keyword
        arguments of ``eht.simulate_coverage``). ``ttype`` is accepted for the reference's
        command lines: the DFT here is always exact (no NFFT).

        ``compat='reference'`` (InverseBench's numbers): ehtim's closure sets
        (``eht.ehtim_closure_sets``) instead of the greedy best-conditioned ones, ehtim's
        ``observe_same`` noise model for ``noise_type='eht'`` (``_ehtim_noise``) and unwrapped
        noisy closure phases for ``gaussian``; see docs/deviations.md.

        Measured data (``observe``; items of ``training.observed.ObservedUVFits``):
        ``prior_grid`` ({imsize, fov_uas}: the grid the prior was trained on) is checked against
        this grid; each item's brightness scale (Jy per image unit) is its total flux over
        ``observed_image_flux`` (the total of a typical training image in image units: 48 for
        the blackhole-small images, max 1), so the image sits in the prior's range whatever the
        source's flux; the total flux is the item's zero-baseline amplitude, or
        ``total_flux_jy`` where given (required for data without zero baselines).

        With ``root``, ``compat='corrected'`` regrids gt.fits onto this problem's grid
        (``imsize`` pixels on ``fov_uas``) and takes its peak there; the reference regrids it to
        ``imsize`` pixels on the file's own field of view, which then replaces ``fov_uas``."""
        super().__init__(sigma_noise, unnorm_shift, unnorm_scale, device, compat=compat)
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
        if ttype not in ("direct", "fast", "nfft"):
            raise ValueError(f"ttype must be 'direct', 'fast' or 'nfft', got {ttype!r}")
        self.noise_type = noise_type
        self.imsize = int(imsize)
        self.psize = float(fov_uas) * RADPERUAS / self.imsize
        self.weights = (float(w1), float(w2), float(w3), float(w4))
        self.gain_std = float(gain_std)
        self.ref_flux = ref_flux
        self.array_file = str(array_file)
        self.fov_uas = float(fov_uas)
        if prior_grid is not None:
            want = (int(prior_grid["imsize"]), float(prior_grid["fov_uas"]))
            if want != (self.imsize, self.fov_uas):
                raise ValueError(
                    f"the image grid {self.imsize}^2 pixels on {self.fov_uas:g} uas is not the "
                    f"prior's ({want[0]}^2 on {want[1]:g} uas): a prior knows the ring sizes "
                    "of its training field only; set problem.model.imsize / fov_uas to the "
                    "prior's grid or use a prior trained on this one"
                )
        if float(observed_image_flux) <= 0:
            raise ValueError(f"observed_image_flux must be > 0, got {observed_image_flux}")
        self.observed_image_flux = float(observed_image_flux)
        self.total_flux_jy = None if total_flux_jy is None else float(total_flux_jy)
        if root is not None:
            root = Path(root)
            cov = read_uvfits(root / "obs.uvfits")
            own_fov = None if self.compat == "reference" else self.fov_uas * RADPERUAS
            flux_scale, self.psize = self._read_gt(root / "gt.fits", self.imsize, own_fov)
        else:
            cov = simulate_coverage(array_file, **(coverage or {}))
        cov = cov.first_fraction(float(observation_time_ratio))
        self.coverage = cov
        self.flux_scale = float(flux_scale)
        sets = ehtim_closure_sets(cov) if self.compat == "reference" else closure_sets(cov)
        dev = self.device
        A = dft_matrix(cov.u, cov.v, self.imsize, self.psize)  # (m, P)
        # real GEMM: image (R, P) @ (P, 2m) -> [Re V, Im V]
        self.dft = torch.cat([A.real, A.imag], 0).T.contiguous().to(dev)
        self.sigma_vis = torch.as_tensor(cov.sigma / self.flux_scale, dtype=torch.float64).to(dev)
        #: ehtim's recomputed thermal noise (from the SEFDs), for the reference's eht noise
        self.sigma_thermal = torch.as_tensor(cov.thermal_sigma() / self.flux_scale).to(dev)
        self.cp_index = torch.as_tensor(sets.cp_index).to(dev)
        self.cp_sign = torch.as_tensor(sets.cp_sign, dtype=torch.float64).to(dev)
        self.ca_index = torch.as_tensor(sets.ca_index).to(dev)
        self.ca_sign = torch.as_tensor(sets.ca_sign, dtype=torch.float64).to(dev)
        # ALMA and APEX by name or by their uvfits codes (AA, AP)
        pair = [i for i, s in enumerate(cov.stations) if s in ("ALMA", "APEX", "AA", "AP")]
        self.flux_baseline = torch.as_tensor(
            np.flatnonzero(np.isin(cov.t1, pair) & np.isin(cov.t2, pair))
        ).to(dev)
        self.sizes = (len(cov), len(sets.cp_index), len(sets.ca_index), 1)

    @staticmethod
    def _read_gt(path: Path, imsize: int, fov: float | None = None) -> tuple[float, float]:
        """Peak (Jy per pixel) and pixel size (rad) of the ground truth regridded to ``imsize``
        pixels on ``fov`` (rad), or on its own field of view (the reference's
        ``process_obs``)."""
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth image {path} not found (root needs gt.fits)")
        import ehtim as eh

        im = eh.image.load_fits(str(path))
        im = im.regrid_image(im.fovx() if fov is None else fov, imsize)
        return float(np.max(im.imvec)), float(im.psize)

    # -- physics ---------------------------------------------------------------------------------
    def image(self, x: torch.Tensor) -> torch.Tensor:
        """(R, P) float64 intensities of normalized images x (R, 1, H, W)."""
        return self.unnormalize(x).to(torch.float64).flatten(1)

    def visibilities(
        self, x: torch.Tensor, img: torch.Tensor | None = None, physics=None
    ) -> torch.Tensor:
        """(R, m) complex visibilities of normalized images x (or of ``img`` from ``image``), on
        the operator's coverage or, for measured items, on each item's own (u, v) (``physics``
        with ``uv``)."""
        img = self.image(x) if img is None else img
        if physics is not None and "uv" in physics:
            return self._item_visibilities(img, physics["uv"])
        ri = img @ self.dft
        m = self.sizes[0]
        return torch.complex(ri[:, :m], ri[:, m:])

    def _item_visibilities(self, img: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """The DFT of ``eht.dft_matrix`` per item on its own (u, v) (B, m, 2), separably (two
        (m, n) phase tables per item instead of an (m, n^2) matrix): rows are item-major."""
        B, n = uv.shape[0], self.imsize
        pos = (n / 2.0 - 0.5 - torch.arange(n, dtype=torch.float64, device=uv.device)) * self.psize
        u, v = uv[..., 0].to(torch.float64), uv[..., 1].to(torch.float64)
        px = torch.exp(2j * math.pi * u[..., None] * pos)  # (B, m, n) columns
        py = torch.exp(2j * math.pi * v[..., None] * pos)  # (B, m, n) rows
        pulse = triangle_pulse(2 * math.pi * u, self.psize) * triangle_pulse(
            2 * math.pi * v, self.psize
        )
        grid = group_rows(img, B).reshape(B, -1, n, n).to(torch.complex128)
        cols = torch.einsum("bshw,bkw->bshk", grid, px)
        vis = torch.einsum("bshk,bkh->bsk", cols, py) * pulse[:, None, :]
        return vis.reshape(img.shape[0], -1)

    def closures(self, vis: torch.Tensor, physics=None):
        """Closure phases (R, c) in radians in (-pi, pi] and log closure amplitudes (R, l);
        measured items carry their own closure tables (``cp_index`` ... in ``physics``)."""
        phase = torch.angle(vis)
        logamp = torch.log(vis.abs())
        if physics is not None and "cp_index" in physics:
            B = physics["cp_index"].shape[0]

            def take(values, index, sign):  # (R, m) -> (R, k) with per-item tables (B, k, j)
                grouped = group_rows(values, B)  # (B, s, m)
                idx = index.reshape(B, 1, -1).expand(-1, grouped.shape[1], -1)
                picked = torch.gather(grouped, 2, idx).reshape(*grouped.shape[:2], *index.shape[1:])
                return (picked * sign[:, None]).sum(-1).reshape(values.shape[0], -1)

            cp = take(phase, physics["cp_index"], physics["cp_sign"].to(phase.dtype))
            lca = take(logamp, physics["ca_index"], physics["ca_sign"].to(phase.dtype))
        else:
            cp = (phase[:, self.cp_index] * self.cp_sign).sum(-1)
            lca = (logamp[:, self.ca_index] * self.ca_sign).sum(-1)
        cp = torch.atan2(torch.sin(cp), torch.cos(cp))
        return cp, lca

    def measurements(self, vis: torch.Tensor, flux: torch.Tensor, physics=None) -> torch.Tensor:
        cp, lca = self.closures(vis, physics)
        return torch.cat([vis.abs(), cp, lca, flux.reshape(-1, 1)], dim=1)

    def forward(self, x: torch.Tensor, **physics) -> torch.Tensor:
        """(R, m + c + l + 1): amplitudes, closure phases, log closure amplitudes, total flux
        (on the operator's coverage, or each measured item's own: ``observe``)."""
        img = self.image(x)
        return self.measurements(self.visibilities(x, img, physics), img.sum(1), physics)

    def sizes_of(self, physics=None) -> tuple[int, int, int, int]:
        """(m, c, l, 1): the operator's sizes, or a batch of measured items' padded ones."""
        if physics is not None and "uv" in physics:
            return (
                physics["uv"].shape[-2],
                physics["cp_index"].shape[-2],
                physics["ca_index"].shape[-2],
                1,
            )
        return self.sizes

    def split(self, y: torch.Tensor, physics=None):
        """(amp, cp, lca, flux) views of packed measurements (``physics``: of measured items)."""
        return torch.split(y, self.sizes_of(physics), dim=-1)

    def item_flux_scale(self, physics, batch: int) -> torch.Tensor:
        """(B,) Jy per image unit: each measured item's own, else the operator's."""
        if physics is not None and "flux_scale" in physics:
            return physics["flux_scale"].reshape(batch).to(torch.float64)
        return torch.full((batch,), self.flux_scale, dtype=torch.float64)

    def closure_sigmas(self, vis: torch.Tensor, sigma: torch.Tensor | None = None):
        """sigma_cp (B, c) and sigma_lca (B, l) propagated from the visibility noise ``sigma``
        (default: the coverage's) and the observed amplitudes."""
        rel = ((self.sigma_vis if sigma is None else sigma) / vis.abs()).square()
        sig_cp = rel[:, self.cp_index].sum(-1).sqrt()
        sig_lca = rel[:, self.ca_index].sum(-1).sqrt()
        return sig_cp, sig_lca

    # -- observations ----------------------------------------------------------------------------
    def __call__(self, data, rng) -> Observation:
        x = data["target"].to(self.device)
        B = x.shape[0]
        with torch.no_grad():
            img = self.image(x)
            vis, flux = self.visibilities(x, img), img.sum(1)
            sig = self.sigma_vis.expand(B, -1)
            if self.noise_type == "gaussian":
                sig_cp, sig_lca = self.closure_sigmas(vis)
                amp, cp, lca, _ = self.split(self.measurements(vis, flux))
                noise = rng.randn(sum(self.sizes[:3]), dtype=torch.float64).to(x.device)
                n_amp, n_cp, n_lca = torch.split(noise, self.sizes[:3], dim=1)
                cp = cp + sig_cp * n_cp
                if self.compat == "corrected":  # the reference leaves them unwrapped
                    cp = torch.atan2(cp.sin(), cp.cos())
                y = torch.cat([amp + sig * n_amp, cp, lca + sig_lca * n_lca, flux[:, None]], dim=1)
            elif self.noise_type == "eht" and self.compat == "reference":
                vis, sig = self._ehtim_noise(img, rng)
                flux = self._median_flux(vis, flux)
                sig_cp, sig_lca = self.closure_sigmas(vis, sig)
                y = self.measurements(vis, flux)
            else:
                if self.noise_type == "eht":
                    vis = vis * self._station_gains(rng, B, x.device)
                m = self.sizes[0]
                noise = rng.randn(2 * m, dtype=torch.float64).to(x.device)
                vis = vis + sig * torch.complex(noise[:, :m], noise[:, m:])
                if self.noise_type == "eht":
                    flux = self._median_flux(vis, flux)
                sig_cp, sig_lca = self.closure_sigmas(vis)
                y = self.measurements(vis, flux)
        physics = {"sigma_amp": sig.clone(), "sigma_cp": sig_cp, "sigma_lca": sig_lca}
        if self.noise_type != "gaussian":  # the noisy visibilities, for visibility-based imagers
            physics["vis"] = torch.view_as_real(vis.contiguous())
        return Observation(y, physics)

    #: what an item of measured data (``training.observed.ObservedUVFits``) must carry
    measured_keys = ("vis_jy", "sigma_jy", "uv", "time", "t1", "t2", "valid", "zero_flux")

    def observe(self, data) -> Observation:
        """Measured visibilities as an ``Observation`` (per item its own coverage: no
        simulation). Each item's closure phases and log closure amplitudes are formed from its
        own stations and time stamps (``eht.closure_sets``, the best-conditioned minimal sets,
        in both compat modes: measured data have no reference counterpart), with sigmas
        propagated from the file's thermal sigmas and the measured amplitudes; the total flux
        is the zero-baseline amplitude (or ``total_flux_jy``) and sets the item's brightness
        scale (``flux_scale`` = flux / ``observed_image_flux`` Jy per image unit). Items of a
        batch are padded to the largest; ``amp_mask``, ``cp_mask`` and ``ca_mask`` mark their
        own entries. The closure tables, (u, v), times, station indices and codes travel as
        per-item physics."""
        missing = [k for k in self.measured_keys if k not in data]
        if missing:
            raise ValueError(
                f"BlackHoleImaging: measured items need {list(self.measured_keys)} "
                f"(training.observed.ObservedUVFits); missing {missing}"
            )
        dev = self.device
        valid = data["valid"].bool()
        B = valid.shape[0]
        if self.total_flux_jy is not None:
            flux_jy = torch.full((B,), self.total_flux_jy, dtype=torch.float64)
        else:
            flux_jy = data["zero_flux"].to(torch.float64).reshape(B)
            if not torch.isfinite(flux_jy).all():
                raise ValueError(
                    "a measured item has no zero baselines (e.g. no ALMA-APEX or JCMT-SMA "
                    "pair) to read its total flux from: set problem.model.total_flux_jy"
                )
        scale = flux_jy / self.observed_image_flux  # (B,) Jy per image unit
        tables = []
        for b in range(B):
            n = int(valid[b].sum())
            cov = UVCoverage(
                tuple(str(i) for i in range(int(data["t2"][b, :n].max()) + 1)),
                *(data[k][b, :n].numpy() for k in ("time", "t1", "t2")),
                data["uv"][b, :n, 0].numpy(),
                data["uv"][b, :n, 1].numpy(),
                data["sigma_jy"][b, :n].numpy(),
            )
            tables.append(closure_sets(cov))

        def pad(name, width, fill=0):
            k = max(1, max(len(getattr(t, name)) for t in tables))
            out = torch.full((B, k, width), fill, dtype=torch.int64)
            mask = torch.zeros(B, k, dtype=torch.bool)
            for b, t in enumerate(tables):
                a = torch.as_tensor(getattr(t, name))
                out[b, : len(a)], mask[b, : len(a)] = a, True
            return out, mask

        cp_index, cp_mask = pad("cp_index", 3)
        cp_sign, _ = pad("cp_sign", 3)
        ca_index, ca_mask = pad("ca_index", 4)
        ca_sign, _ = pad("ca_sign", 4)
        if not cp_mask.any(1).all():
            raise ValueError("a measured item has no closure phase (fewer than 3 stations)")
        vis = torch.view_as_complex(data["vis_jy"].to(torch.float64).contiguous())
        vis = torch.where(valid, vis / scale[:, None], torch.ones_like(vis))
        sigma = torch.where(valid, data["sigma_jy"].to(torch.float64) / scale[:, None], 1.0)
        physics = {
            "uv": data["uv"].to(torch.float64),
            "cp_index": cp_index,
            "cp_sign": cp_sign.to(torch.float64),
            "cp_mask": cp_mask,
            "ca_index": ca_index,
            "ca_sign": ca_sign.to(torch.float64),
            "ca_mask": ca_mask,
            "amp_mask": valid,
        }
        rel = (sigma / vis.abs()).square()
        sig_cp = torch.where(
            cp_mask, torch.gather(rel, 1, cp_index.flatten(1)).reshape(B, -1, 3).sum(-1).sqrt(), 1.0
        )
        sig_lca = torch.where(
            ca_mask, torch.gather(rel, 1, ca_index.flatten(1)).reshape(B, -1, 4).sum(-1).sqrt(), 1.0
        )
        cp, lca = self.closures(vis, physics)
        y = torch.cat([vis.abs(), cp, lca, (flux_jy / scale)[:, None]], dim=1)
        physics.update(
            {
                "sigma_amp": sigma,
                "sigma_cp": sig_cp,
                "sigma_lca": sig_lca,
                "vis": torch.view_as_real(vis.contiguous()),
                "flux_scale": scale,
                **{k: data[k] for k in ("time", "t1", "t2")},
                **{k: data[k] for k in ("stations", "source") if k in data},
            }
        )
        return Observation(y.to(dev), {k: v.to(dev) for k, v in physics.items()})

    def _median_flux(self, vis: torch.Tensor, flux: torch.Tensor) -> torch.Tensor:
        """The reference's total-flux estimate: the median |V| on the ALMA-APEX baseline (the
        mean of the two middle values for an even count, as numpy); ``flux`` without it."""
        if not len(self.flux_baseline):
            return flux
        return torch.quantile(vis[:, self.flux_baseline].abs(), 0.5, dim=1)

    def _ehtim_noise(self, img: torch.Tensor, rng):
        """Noisy visibilities (B, m) and their sigmas (B, m) as ehtim's
        ``Image.observe_same(obs, ampcal=False, phasecal=False)`` makes them
        (``obs_simulate.add_noise``; InverseBench's ``eht`` noise), from the image clipped to
        [0, 1] as the reference does. Per station s a constant gain offset c_s and per time
        stamp t and station a gain g_ts (both N(0, 1), scaled by ``gain_std``: ehtim's
        gain_offset = gainp = 0.1) and a phase u_ts ~ U(0, 1); per visibility thermal noise
        n ~ CN with std ``sigma_thermal`` on each part (ehtim's recomputed SEFD noise):

            G = sqrt(|(1 + 0.1 c_a)(1 + 0.1 g_ta)| |(1 + 0.1 c_b)(1 + 0.1 g_tb)|)
            V' = (V + n) G exp(2 pi i (u_tb - u_ta)),   sigma' = sigma_thermal G.

        ehtim seeds these draws from Python's (randomized) string hash of str(time.time()) and
        numpy's global RNG, so the reference's draws cannot be reproduced; here they come from
        the item's stream, in the order c (S), g (T, S), u (T, S), n (2m)."""
        cov = self.coverage
        B, dev = img.shape[0], img.device
        vis = self.visibilities(None, img.clamp(0, 1))
        times = np.unique(cov.time)
        scan = torch.as_tensor(np.searchsorted(times, cov.time), device=dev)
        t1 = torch.as_tensor(cov.t1, device=dev)
        t2 = torch.as_tensor(cov.t2, device=dev)
        S, T, m = len(cov.stations), len(times), self.sizes[0]
        const = rng.randn(S, dtype=torch.float64).to(dev)
        var = rng.randn(T, S, dtype=torch.float64).to(dev)
        phase = rng.rand(T, S, dtype=torch.float64).to(dev)
        noise = rng.randn(2 * m, dtype=torch.float64).to(dev)
        rows = torch.arange(B, device=dev)[:, None]
        g = self.gain_std
        station = (1 + g * const[rows, t1]) * (1 + g * var[rows, scan, t1])
        other = (1 + g * const[rows, t2]) * (1 + g * var[rows, scan, t2])
        gain = (station.abs() * other.abs()).sqrt()
        turn = 2 * math.pi * (phase[rows, scan, t2] - phase[rows, scan, t1])
        sigma = self.sigma_thermal.expand(B, -1)
        vis = (vis + sigma * torch.complex(noise[:, :m], noise[:, m:])) * gain
        return vis * torch.polar(torch.ones_like(turn), turn), sigma * gain

    def _station_gains(self, rng, B: int, device) -> torch.Tensor:
        """(B, m) g_1 conj(g_2) for complex station gains drawn per item, station and scan."""
        cov = self.coverage
        times = np.unique(cov.time)
        scan = torch.as_tensor(np.searchsorted(times, cov.time), device=device)
        S, T = len(cov.stations), len(times)
        amp = 1.0 + self.gain_std * rng.randn(T, S, dtype=torch.float64).to(device)
        phase = 2 * math.pi * rng.rand(T, S, dtype=torch.float64).to(device)
        gains = torch.polar(amp, phase)  # (B, T, S)
        t1 = torch.as_tensor(cov.t1, device=device)
        t2 = torch.as_tensor(cov.t2, device=device)
        return gains[:, scan, t1] * gains[:, scan, t2].conj()

    # -- data terms ------------------------------------------------------------------------------
    def chi2_terms(self, measurements: torch.Tensor, observation: Observation):
        """Per-row chi2_amp, chi2_cp, chi2_lca, chi2_flux (reduced: about 1 at the noise level);
        for measured items the means run over each item's own entries (``*_mask``)."""
        B = observation.batch
        phys = observation.physics
        pred = group_rows(measurements, B)  # (B, n, M)
        amp, cp, lca, flux = self.split(pred, phys)
        y_amp, y_cp, y_lca, y_flux = (t.unsqueeze(1) for t in self.split(observation.y, phys))
        s_amp = phys["sigma_amp"].unsqueeze(1)
        s_cp = phys["sigma_cp"].unsqueeze(1)
        s_lca = phys["sigma_lca"].unsqueeze(1)
        terms = (
            ((amp - y_amp) / s_amp).square(),
            2.0 * ((1 - torch.cos(y_cp - cp)) / s_cp.square()),
            ((lca - y_lca) / s_lca).square(),
        )
        if "amp_mask" in phys:  # measured items: padded to the batch's largest
            masks = [phys[k].unsqueeze(1).to(amp.dtype) for k in ("amp_mask", "cp_mask", "ca_mask")]
            chi = [
                (t * w).sum(-1) / w.sum(-1).clamp_min(1) for t, w in zip(terms, masks, strict=True)
            ]
        else:
            chi = [t.mean(-1) for t in terms]
        chi_flux = ((flux - y_flux) / 2).square().mean(-1)
        return tuple(t.flatten() for t in (*chi, chi_flux))

    def counts(self, observation: Observation) -> torch.Tensor:
        """(B, 3) numbers of amplitudes, closure phases and log closure amplitudes per item."""
        phys = observation.physics
        if "amp_mask" in phys:
            return torch.stack(
                [phys[k].sum(-1) for k in ("amp_mask", "cp_mask", "ca_mask")], -1
            ).to(torch.float64)
        return torch.tensor(self.sizes[:3], dtype=torch.float64).expand(observation.batch, 3)

    def loss_m(self, measurements: torch.Tensor, observation: Observation) -> torch.Tensor:
        """The reference's weighted data term per row."""
        chi = self.chi2_terms(measurements, observation)
        w1, w2, w3, w4 = self.weights
        if "amp_mask" in observation.physics:  # each item's own counts
            n = self.counts(observation).to(chi[0].device)
            rows = chi[0].shape[0] // observation.batch
            m, c, l = n.repeat_interleave(rows, 0).unbind(-1)
        else:
            m, c, l, _ = self.sizes
        return 2 * (w1 * m * chi[0] + w2 * c * chi[1] + w3 * l * chi[2] + w4 * chi[3])
