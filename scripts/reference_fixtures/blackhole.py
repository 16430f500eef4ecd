"""Parity fixture for black-hole imaging: the reference's ``BlackHoleImaging`` (ttype='direct',
64^2) and ``BlackHoleEvaluator`` on seeded images.

Runs inside a reference checkout (scripts/make_reference_fixtures.py). It first makes the two files
the reference reads, ``obs.uvfits`` (the EHT 2017 array toward M87*, from this project's station
table data/eht/EHT2017_m87.txt, read by path) and ``gt.fits`` (a crescent on a 160 uas field), with
ehtim, and writes them to ``<out>/blackhole_root/`` so this project's operator loads the same
coverage. Then it records, for the reference's own classes:

* closure index and conjugation tables, visibility sigmas, the image scale (``multiplier``);
* ``forward`` of a target and four samples;
* noisy observations for ``vis_thermal`` and ``gaussian`` (torch's global RNG, seeded; the draws
  are recorded by replaying the seed) and for ``eht`` (ehtim's ``observe_same``, whose station
  gains, phases and thermal noise come from ``hashrandn`` / ``hashrand`` / ``cerror``: these
  three are replaced, in this process only, by look-ups into seeded tables that are saved);
* ``loss``, its gradient and ``loss_m`` against those observations;
* ``evaluate_chisq``, ``evaluate_psnr`` and the evaluator's metrics for 1 and 4 samples;
* the number of visibilities kept for ``observation_time_ratio`` 0.3 and 0.5.
"""

from __future__ import annotations

import sys
from pathlib import Path

REF_DIR = Path.cwd()  # make_reference_fixtures.py runs generators inside the reference checkout
sys.path.insert(0, str(REF_DIR))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, save  # noqa: E402

ARRAY = Path(__file__).resolve().parents[2] / "data" / "eht" / "EHT2017_m87.txt"
RA, DEC = 12.513728717, 12.39112324  # M87*
RF, BW, MJD = 230e9, 2e9, 57849
NPIX, FOV_UAS = 64, 160.0
SEED = 20250607


def crescent(n: int, fov: float, rng: np.random.RandomState) -> np.ndarray:
    """(n, n) asymmetric Gaussian ring, max 1, random radius, width and orientation."""
    radius, width = rng.uniform(18, 24), rng.uniform(3, 5)
    angle, asym = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.8)
    c = (np.arange(n) - n / 2 + 0.5) * fov / n
    yy, xx = np.meshgrid(c, c, indexing="ij")
    r = np.hypot(xx, yy)
    img = np.exp(-0.5 * ((r - radius) / width) ** 2) * (
        1 + asym * np.cos(np.arctan2(yy, xx) - angle)
    )
    return img / img.max()


def make_root(root: Path, rng: np.random.RandomState):
    """obs.uvfits (noise-free visibilities of gt on the array's coverage) and gt.fits."""
    import ehtim as eh

    root.mkdir(parents=True, exist_ok=True)
    arr = eh.array.load_txt(str(ARRAY))
    obs0 = arr.obsdata(RA, DEC, RF, BW, 60, 600, 0, 24, mjd=MJD, timetype="UTC", elevmin=10,
                       elevmax=85)  # fmt: skip
    gt = eh.image.make_square(obs0, NPIX, FOV_UAS * eh.RADPERUAS)
    img = crescent(NPIX, FOV_UAS, rng)
    gt.imvec = (0.6 * img / img.sum()).ravel()  # 0.6 Jy in total
    obs = gt.observe_same_nonoise(obs0, ttype="direct", verbose=False)
    obs.save_uvfits(str(root / "obs.uvfits"))
    gt.save_fits(str(root / "gt.fits"))
    return img


class EhtimDraws:
    """Replaces ehtim's hash-seeded draws (obs_helpers.hashrandn / hashrand / cerror) by seeded
    tables: a constant gain offset per station, a gain and a phase per (time, station), and the
    thermal noise of the Stokes I visibilities (real, imaginary)."""

    def __init__(self, stations, times, m, rng: np.random.RandomState):
        self.station = {s: i for i, s in enumerate(stations)}
        self.time = {float(t): i for i, t in enumerate(times)}
        S, T = len(stations), len(times)
        self.const = rng.standard_normal(S)
        self.var = rng.standard_normal((T, S))
        self.phase = rng.uniform(size=(T, S))
        self.thermal = rng.standard_normal((2, m))
        self.cerror_calls = 0

    def hashrandn(self, *args):
        site, kind = args[0], args[1]
        assert kind == "gain", args
        if len(args) == 4:  # (site, 'gain', str(gain_offset), seed): constant per station
            return self.const[self.station[site]]
        return self.var[self.time[float(args[2])], self.station[site]]  # (site,'gain',t,gp,seed)

    def hashrand(self, *args):
        site, kind, t = args[0], args[1], args[2]
        assert kind == "phase", args
        return self.phase[self.time[float(t)], self.station[site]]

    def cerror(self, sigma):
        self.cerror_calls += 1
        if self.cerror_calls % 4 == 1:  # vis1 = Stokes I in the stokes polrep
            return sigma * (self.thermal[0] + 1j * self.thermal[1])
        return 0.0 * sigma  # Q, U, V: not used by the problem


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    torch.set_num_threads(1)
    import ehtim as eh
    import ehtim.observing.obs_helpers as obsh

    from eval import BlackHoleEvaluator
    from inverse_problems.blackhole import BlackHoleImaging

    rng = np.random.RandomState(SEED)
    root = args.out / "blackhole_root"
    img = make_root(root, rng)

    ops = {
        kind: BlackHoleImaging(root=str(root), noise_type=kind, ttype="direct", imsize=NPIX,
                               device="cpu")
        for kind in ("vis_thermal", "gaussian", "eht")
    }  # fmt: skip
    op = ops["vis_thermal"]
    arrays = {
        "cp_index": op.cp_index.numpy(),
        "cp_conjugate": op.cp_conjugate.numpy(),
        "camp_index": op.camp_index.numpy(),
        "camp_conjugate": op.camp_conjugate.numpy(),
        "sigma": op.sigma.numpy(),
        "multiplier": np.float64(op.ref_multiplier),
        "psize": np.float64(op.ref_im.psize),
    }

    # target: the ground truth; samples: shifted, noisy, blurred and out-of-range versions
    target01 = img
    t = torch.from_numpy(target01).float()
    g = torch.Generator().manual_seed(SEED)
    samples01 = torch.stack(
        [
            torch.roll(t, (2, -1), (0, 1)),
            t + 0.05 * torch.randn(t.shape, generator=g),
            torch.roll(t, (-1, 3), (0, 1)) * 0.9 + 0.02,
            t * 1.15 - 0.1 + 0.03 * torch.randn(t.shape, generator=g),  # below 0 and above 1
        ]
    )[:, None]
    x_target = op.normalize(t[None, None])
    x_samples = op.normalize(samples01)
    arrays.update(x_target=x_target.numpy(), x_samples=x_samples.numpy())
    with torch.no_grad():
        arrays["forward"] = op.forward(torch.cat([x_target, x_samples])).numpy()[:, 0, :, 0]

    # noisy observations: torch draws recorded by replaying the seed
    torch.manual_seed(SEED)
    y_vt = ops["vis_thermal"]({"target": x_target})
    torch.manual_seed(SEED)
    vis = op.forward_vis(op.unnormalize(x_target))
    noise = torch.randn_like(vis) + 1j * torch.randn_like(vis)
    arrays["noise_vis_thermal"] = np.concatenate([noise.real.numpy(), noise.imag.numpy()], 2)[
        :, 0, :, 0
    ]
    torch.manual_seed(SEED + 1)
    y_g = ops["gaussian"]({"target": x_target})
    torch.manual_seed(SEED + 1)
    m, c, n_lca = op.amp_dim, op.cphase_dim, op.logcamp_dim
    draws = [torch.randn(1, 1, k, 1) for k in (m, c, n_lca)]  # randn_like of float32 (1,1,k,1)
    arrays["noise_gaussian"] = torch.cat(draws, 2).numpy()[:, 0, :, 0]

    obs = ops["eht"].ref_obs
    tables = EhtimDraws(list(obs.tarr["site"]), np.unique(obs.data["time"]), len(obs.data), rng)
    obsh.hashrandn, obsh.hashrand, obsh.cerror = tables.hashrandn, tables.hashrand, tables.cerror
    y_eht = ops["eht"]({"target": x_target})
    arrays.update(
        eht_const=tables.const, eht_var=tables.var, eht_phase=tables.phase,
        eht_thermal=tables.thermal,
    )  # fmt: skip
    for name, y in (("vis_thermal", y_vt), ("gaussian", y_g), ("eht", y_eht)):
        arrays[f"y_{name}"] = y.numpy()[:, 0, :, 0]

    # loss, gradient and loss_m of the samples against two observations
    for name, y in (("vis_thermal", y_vt), ("eht", y_eht)):
        x = x_samples.clone().requires_grad_(True)
        loss = op.loss(x, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        arrays[f"loss_{name}"] = loss.detach().numpy()
        arrays[f"grad_{name}"] = grad.numpy()
        with torch.no_grad():
            arrays[f"loss_m_{name}"] = op.loss_m(op.forward(x_samples), y).numpy()

    # evaluator: chi^2 and PSNR pieces, metrics for 4 and 1 samples
    pred = op.unnormalize(x_samples)
    target = op.unnormalize(x_target)
    with torch.no_grad():
        for name, y in (("vis_thermal", y_vt), ("eht", y_eht)):
            yy = y.repeat(4, 1, 1, 1)
            cp, ca = op.evaluate_chisq(pred, yy, normalize=False)
            arrays[f"chi2_cp_{name}"], arrays[f"chi2_camp_{name}"] = cp.numpy(), ca.numpy()
        arrays["psnr_table"] = op.evaluate_psnr(target.repeat(4, 1, 1, 1), pred).numpy()
        arrays["aligned"] = op.aligned_images(target.repeat(4, 1, 1, 1), pred).numpy()
        keys = ["cp_chi2", "camp_chi2", "psnr", "blur_psnr (f=10)", "blur_psnr (f=15)",
                "blur_psnr (f=20)"]  # fmt: skip
        for n in (4, 1):
            ev = BlackHoleEvaluator(forward_op=op)
            metrics = ev(pred[:n], target, y_eht)
            arrays[f"metrics_{n}"] = np.array([metrics[k] for k in keys])
    arrays["metric_keys"] = np.array(keys)

    # observation_time_ratio: how many visibilities the reference keeps
    for ratio in (0.3, 0.5):
        kept = BlackHoleImaging(
            root=str(root), ttype="direct", imsize=NPIX, device="cpu", observation_time_ratio=ratio
        )
        arrays[f"n_vis_ratio_{ratio}"] = np.int64(kept.amp_dim)

    meta = {
        "seed": SEED,
        "imsize": NPIX,
        "fov_uas": FOV_UAS,
        "array": "data/eht/EHT2017_m87.txt",
        "obs": "ehtim Array.obsdata: M87*, 230 GHz, 2 GHz, 60 s every 600 s over 24 h, "
        "MJD 57849, elevation 10-85 deg; noise-free visibilities of gt.fits (ttype direct)",
        "ttype": "direct",
        "sizes": [int(m), int(c), int(n_lca)],
        "ehtim": eh.__version__ if hasattr(eh, "__version__") else "unknown",
        "eht_draws": "ehtim's hashrandn/hashrand/cerror replaced by the tables eht_const (S), "
        "eht_var (T, S), eht_phase (T, S), eht_thermal (2, m) (stations in tarr order, sorted "
        "times)",
    }
    save(args.out / "blackhole.npz", REF_DIR, meta, **arrays)


if __name__ == "__main__":
    main()
