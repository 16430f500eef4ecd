"""Regularized maximum-likelihood imaging with ehtim (Chael et al., "Interferometric imaging
directly with closure phases and closure amplitudes", ApJ 857, 2018; the EHT M87* imaging
pipelines, EHT Collaboration, ApJL 875 L4, 2019): the black-hole problem's classical baseline,
no diffusion prior.

Per item, ehtim's ``Imager`` minimizes chi^2 terms on closure phases and log closure amplitudes
(``data_term``, ehtim's weights) plus regularizers (``reg_term``: relative entropy ``simple``
against a Gaussian prior image, total variation ``tv``/``tv2``, ``flux``...) by L-BFGS on the
item's own noisy visibilities (the observation carries them for the ``vis_thermal`` and ``eht``
noise models), with the DFT (``ttype='direct'``: no NFFT). As in the EHT pipelines it runs
``rounds`` times, each started from the previous image blurred to the array's nominal resolution.
The initial and prior image is a circular Gaussian of ``prior_fwhm_uas`` with the observed total
flux. Deterministic: every sample of an item is the same image. ehtim applies the model itself,
so the harness counts no operator calls.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch

from algo.base import Algo

RADPERUAS = math.pi / 180.0 / 3600.0 / 1e6  # radians per micro-arcsecond


def station_names(codes: torch.Tensor) -> list[str]:
    """Station codes of a measured item (S, 8) ASCII rows (``training.observed``) as strings."""
    rows = codes.detach().cpu().numpy().astype(np.uint8)
    return [bytes(r[r > 0]).decode("ascii") for r in rows if (r > 0).any()]


class EhtimRML(Algo):
    requires = frozenset()
    uses_prior = False  # runs without a checkpoint (main.py gives it the image shape only)

    def __init__(
        self,
        net,
        forward_op,
        data_term=None,
        reg_term=None,
        prior_fwhm_uas: float = 40.0,
        maxit: int = 100,
        rounds: int = 3,
        blur_uas: float = 20.0,
    ):
        super().__init__(net, forward_op)
        inner = getattr(forward_op, "inner", forward_op)
        if not hasattr(inner, "coverage") or not hasattr(inner, "closure_sigmas"):
            raise ValueError(
                "ehtim_rml needs the black-hole imaging operator (EHT coverage and closures, "
                f"e.g. problem=blackhole-small); got {type(inner).__name__}"
            )
        if inner.noise_type == "gaussian":
            raise ValueError(
                "ehtim_rml images visibilities, which noise_type='gaussian' does not produce; "
                "use problem.model.noise_type=vis_thermal or eht"
            )
        self.op = inner
        self.data_term = dict(data_term or {"cphase": 20, "logcamp": 20})
        self.reg_term = dict(reg_term or {"simple": 1, "tv2": 1, "flux": 10})
        self.prior_fwhm = float(prior_fwhm_uas) * RADPERUAS
        self.maxit, self.rounds, self.blur = int(maxit), int(rounds), float(blur_uas) * RADPERUAS

    def _obsdata(self, vis_jy: np.ndarray, sigma_jy: np.ndarray, physics=None):
        """ehtim's ``Obsdata`` of one item: on the operator's coverage, or (measured items:
        ``uv`` in the item's ``physics``) on the item's own, with the stations named by the
        data's own codes (a table rebuilt from ``array_file`` names them otherwise, e.g. ALMA
        for the uvfits code AA: ehtim's ``KeyError: 'AA'``)."""
        import ehtim as eh
        from ehtim.const_def import DTARR, DTPOL_STOKES

        cov, src = self.op.coverage, dict(self.op.coverage.source)
        if physics is not None and "uv" in physics:
            n = int(physics["amp_mask"][0].sum())
            names = np.asarray(station_names(physics["stations"][0]))
            time = physics["time"][0, :n].cpu().numpy()
            t1 = physics["t1"][0, :n].cpu().numpy()
            t2 = physics["t2"][0, :n].cpu().numpy()
            u, v = physics["uv"][0, :n].cpu().numpy().T
            vis_jy, sigma_jy = vis_jy[:n], sigma_jy[:n]
            ra, dec, rf, bw, mjd = physics["source"][0].tolist()
            src.update(ra=ra, dec=dec, rf=rf, bw=bw, mjd=int(mjd))
        else:
            names = np.asarray(cov.stations)
            time, t1, t2, u, v = cov.time, cov.t1, cov.t2, cov.u, cov.v
        table = np.zeros(len(u), dtype=DTPOL_STOKES)
        table["time"], table["tint"] = time, src.get("tint", 60.0)
        table["t1"], table["t2"] = names[t1], names[t2]
        table["u"], table["v"], table["vis"] = u, v, vis_jy
        for k in ("sigma", "qsigma", "usigma", "vsigma"):
            table[k] = sigma_jy
        # the station table by the data's own names (closure imaging needs no positions), the
        # best-connected station first: ehtim's minimal closure sets take the first station of
        # the table present at a time stamp as reference and skip closures whose baselines are
        # missing, so a reference without a partner (ALMA once its zero baseline to APEX is
        # flagged) loses closures (measured on a synthetic EHT 2017 file: 265 of 399 closure
        # phases and 174 of 332 log closure amplitudes; this order: 399 and 237)
        seen = np.concatenate([t1, t2])
        order = sorted(range(len(names)), key=lambda i: (-int(np.sum(seen == i)), i))
        tarr = np.zeros(len(names), dtype=DTARR)
        tarr["site"] = names[order]
        tarr["sefdr"] = tarr["sefdl"] = 1.0
        return eh.obsdata.Obsdata(
            src["ra"], src["dec"], src["rf"], src["bw"], table, tarr, source="M87",
            mjd=int(src["mjd"]),
        )  # fmt: skip

    def _image(self, vis_jy, sigma_jy, flux_jy: float, physics=None) -> np.ndarray:
        import ehtim as eh

        obs = self._obsdata(vis_jy, sigma_jy, physics)
        n, psize = self.op.imsize, self.op.psize
        gauss = eh.image.make_square(obs, n, n * psize)
        gauss = gauss.add_gauss(flux_jy, (self.prior_fwhm, self.prior_fwhm, 0, 0, 0))
        init = gauss
        for _ in range(self.rounds):
            imager = eh.imager.Imager(
                obs, init, prior_im=gauss, flux=flux_jy, data_term=self.data_term,
                reg_term=self.reg_term, ttype="direct", maxit=self.maxit, norm_reg=True,
            )  # fmt: skip
            imager.make_image_I(show_updates=False)
            out = imager.out_last()
            init = out.blur_circ(self.blur)
        return out.imvec.reshape(n, n)

    def inference(self, observation, num_samples=1, rng=None):
        op = self.op
        vis = torch.view_as_complex(observation.physics["vis"].to(torch.float64).contiguous())
        flux = op.split(observation.y, observation.physics)[3].reshape(-1)
        # the observation's visibility sigmas: the coverage's, or ehtim's gain-scaled ones
        # (compat=reference, noise_type=eht)
        sigma = observation.physics["sigma_amp"].to(torch.float64)
        scale = op.item_flux_scale(observation.physics, observation.batch)  # Jy per unit
        images = []
        for b in range(observation.batch):
            item = observation.item(b).physics
            fs = float(scale[b])
            vis_jy = vis[b].cpu().numpy() * fs
            sigma_jy = sigma[b].cpu().numpy() * fs
            with contextlib.redirect_stdout(io.StringIO()):  # ehtim reports every iteration
                img = self._image(vis_jy, sigma_jy, float(flux[b]) * fs, item)
            images.append(torch.from_numpy(img / fs)[None])
        x = op.normalize(torch.stack(images)).float().to(observation.y.device)
        return x.repeat_interleave(num_samples, 0)
