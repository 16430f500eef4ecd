"""Measured data as test items: observations without a ground truth.

An item of these datasets has no ``target``; ``main.py`` hands it to the operator's ``observe``
instead of simulating, and the evaluators score the result against the data alone.

* ``ObservedUVFits``: one EHT observation per uvfits file (the format ehtim reads and writes),
  prepared as the EHT imaging pipelines do (``inverse_problems.eht.load_measured``: Stokes I,
  autocorrelations dropped, scan averaging with the file's own thermal sigmas, the total flux
  from the zero baselines, which are then flagged). Items are padded to the largest file of the
  set (``valid`` marks each file's own visibilities). Checked at set-up, naming the file:
  frequency (``frequency_ghz`` within ``frequency_tolerance``), stations (``stations``: codes
  the data must contain; at least three stations at some time stamp for a closure phase).
* ``ObservedKSpace``: raw multi-coil k-space in the fastMRI HDF5 layout (``kspace`` (slices,
  coils, H, W) complex; an optional ``mask`` (W,) of the acquired lines, else read off the
  non-zero columns) without a reconstruction; the coil maps are estimated from the same data by
  ESPIRiT (Uecker et al., MRM 71, 2014; sigpy's ``EspiritCalib``) on the fully sampled
  calibration lines. An optional ``reconstruction_rss`` / ``reconstruction`` is not a target
  of the solver: a ``reference`` key (a complex image (2, H, W)) can be given separately.

Nothing is downloaded: every path is a local file.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.helper import select_ids


def _files(files, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """A list of paths from a path, a folder (its files with ``suffixes``), a glob or a list."""
    items = [files] if isinstance(files, (str, Path)) else list(files or [])
    out: list[Path] = []
    for f in items:
        f = str(f)
        if any(c in f for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(f))
        elif Path(f).is_dir():
            found = sorted(p for p in Path(f).iterdir() if p.suffix.lower() in suffixes)
        else:
            found = [Path(f)]
        if not found:
            raise FileNotFoundError(f"no {what} files match {f}")
        out.extend(found)
    if not out:
        raise ValueError(f"give the {what} files (problem.data.files: a path, folder or glob)")
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {p} not found")
    return out


def _codes(names, width: int = 8) -> np.ndarray:
    """Station codes as (S, width) uint8 ASCII (tensors cannot hold strings; read back by
    ``algo.ehtim_rml.station_names``)."""
    out = np.zeros((len(names), width), dtype=np.uint8)
    for i, s in enumerate(names):
        b = str(s).encode("ascii", "replace")[:width]
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


class ObservedUVFits(Dataset):
    """EHT observations in uvfits files as measured test items (module docstring).

    ``files``: a path, a folder of ``*.uvfits``, a glob, or a list of those; item i is the i-th
    file in that order. Per item: ``vis_jy`` (m, 2) Stokes I (re, im), ``sigma_jy`` (m), ``uv``
    (m, 2) wavelengths, ``time`` (m) hours, ``t1`` / ``t2`` (m) station indices into
    ``stations`` (S, 8) (the file's own codes), ``tint`` (m) s, ``valid`` (m), ``zero_flux``
    (Jy, NaN without zero baselines) and ``source`` (ra h, dec deg, rf Hz, bw Hz, mjd)."""

    def __init__(
        self,
        files,
        frequency_ghz: float = 230.0,
        frequency_tolerance: float = 0.05,
        stations=None,
        scan_average: bool = True,
        id_list=None,
    ):
        from inverse_problems.eht import load_measured

        self.paths = _files(files, (".uvfits", ".uvf", ".fits"), "uvfits")
        self.id_list = select_ids(id_list, len(self.paths), self.paths[0].parent)
        self.measured = {}
        for i in self.id_list:
            path = self.paths[int(i)]
            data = load_measured(path, scan_average=scan_average)
            cov = data.coverage
            rf = float(cov.source["rf"]) / 1e9
            if abs(rf / float(frequency_ghz) - 1) > float(frequency_tolerance):
                raise ValueError(
                    f"{path} was observed at {rf:.4g} GHz, not the problem's "
                    f"{float(frequency_ghz):g} GHz (+-{100 * frequency_tolerance:g} %): the "
                    "black hole's size and brightness change with frequency and the prior knows "
                    "one; set problem.data.frequency_ghz only for data of that frequency"
                )
            present = {cov.stations[k] for k in np.unique(np.concatenate([cov.t1, cov.t2]))}
            lacking = sorted(set(stations or ()) - present)
            if lacking:
                raise ValueError(
                    f"{path} lacks the stations {lacking} the problem requires "
                    f"(it has {sorted(present)}); problem.data.stations lists the codes needed"
                )
            per_time = [
                len(set(cov.t1[cov.time == t]) | set(cov.t2[cov.time == t]))
                for t in np.unique(cov.time)
            ]
            if max(per_time) < 3:
                raise ValueError(
                    f"{path} never has three stations at once (after flagging the zero "
                    "baselines): no closure phase can be formed from it"
                )
            self.measured[int(i)] = data
        self.size = max(len(d.coverage) for d in self.measured.values())
        self.num_stations = max(len(d.coverage.stations) for d in self.measured.values())

    def __len__(self) -> int:
        return len(self.id_list)

    def path(self, index: int) -> Path:
        return self.paths[int(self.id_list[index])]

    def __getitem__(self, index: int) -> dict:
        data = self.measured[int(self.id_list[index])]
        cov, m, M = data.coverage, len(data.coverage), self.size

        def padded(a, fill=0.0, dtype=torch.float64):
            a = torch.as_tensor(np.asarray(a))
            out = torch.full((M, *a.shape[1:]), fill, dtype=dtype)
            out[:m] = a.to(dtype)
            return out

        codes = np.zeros((self.num_stations, 8), dtype=np.uint8)
        codes[: len(cov.stations)] = _codes(cov.stations)
        src = cov.source
        return {
            "vis_jy": padded(np.stack([data.vis.real, data.vis.imag], -1)),
            "sigma_jy": padded(cov.sigma, 1.0),
            "uv": padded(np.stack([cov.u, cov.v], -1)),
            "time": padded(cov.time),
            "t1": padded(cov.t1, 0, torch.int64),
            "t2": padded(cov.t2, 0, torch.int64),
            "tint": padded(cov.tint if cov.tint is not None else np.full(m, src["tint"])),
            "valid": padded(np.ones(m, dtype=bool), False, torch.bool),
            "zero_flux": torch.tensor(
                float("nan") if data.zero_baseline_flux is None else data.zero_baseline_flux,
                dtype=torch.float64,
            ),
            "stations": torch.from_numpy(codes),
            "source": torch.tensor(
                [src["ra"], src["dec"], src["rf"], src["bw"], src["mjd"]], dtype=torch.float64
            ),
        }


#: EHT 2017 station names (ehtim's tables) and their uvfits codes (EHT Collaboration, ApJL 875
#: L2, 2019, Table 1)
EHT_CODES = {
    "ALMA": "AA", "APEX": "AP", "JCMT": "JC", "SMA": "SM", "SMT": "AZ", "LMT": "LM",
    "PV": "PV", "SPT": "SP",
}  # fmt: skip


def ring_image(
    n: int,
    fov_uas: float,
    diameter_uas: float,
    width_uas: float = 8.0,
    asymmetry: float = 0.5,
    position_angle_deg: float = 180.0,
) -> np.ndarray:
    """(n, n) a crescent of known geometry, total 1: a Gaussian ring (FWHM ``width_uas``) of
    ``diameter_uas`` brightened towards ``position_angle_deg`` (east of north) by
    1 + ``asymmetry`` cos(theta - PA); rows top (north) to bottom, east to the left."""
    c = (np.arange(n) - n / 2 + 0.5) * fov_uas / n
    north, west = np.meshgrid(-c, c, indexing="ij")
    r = np.hypot(north, west)
    theta = np.arctan2(-west, north)  # east of north
    sigma = width_uas / (2 * np.sqrt(2 * np.log(2)))
    img = np.exp(-0.5 * ((r - diameter_uas / 2) / sigma) ** 2)
    img *= 1 + asymmetry * np.cos(theta - np.deg2rad(position_angle_deg))
    return img / img.sum()


def write_synthetic_uvfits(
    path,
    image: np.ndarray,
    fov_uas: float,
    total_flux_jy: float = 0.6,
    array_file="data/eht/EHT2017_m87.txt",
    codes: dict | None = EHT_CODES,
    rf: float = 230e9,
    tint: float = 60.0,
    tadv: float = 600.0,
    gain_errors: bool = True,
    seed: int = 0,
) -> Path:
    """Observe ``image`` (rows north to south, east left; scaled to ``total_flux_jy``) with
    ehtim's simulator toward M87* on the EHT 2017 night (thermal noise from the SEFDs) and write
    a uvfits file with the stations renamed by ``codes`` (the files' two-letter codes). With
    ``gain_errors``, station gains per time stamp are applied afterwards: amplitude
    1 + 0.1 N(0, 1) and a uniform phase per station (ehtim's own gain draws are seeded from
    Python's per-process string hash, so its files would differ from run to run), sigmas scaled
    with the amplitudes as ehtim does. Reproducible: ehtim's thermal noise comes from numpy's
    global RNG, seeded with ``seed`` here and restored; the gains from a local generator."""
    import contextlib
    import io

    import ehtim as eh

    from inverse_problems.eht import M87, RADPERUAS

    arr = eh.array.load_txt(str(array_file))
    if codes:
        tarr = arr.tarr.copy()
        tarr["site"] = [codes.get(str(s), str(s)) for s in tarr["site"]]
        arr = eh.array.Array(tarr)  # its station index (tkey) follows the new names
    n = image.shape[0]
    im = eh.image.Image(
        np.asarray(image, dtype=np.float64) * total_flux_jy / image.sum(),
        fov_uas * RADPERUAS / n, M87["ra"], M87["dec"], rf=rf, source="M87", mjd=57849,
    )  # fmt: skip
    state = np.random.get_state()  # noqa: NPY002 (ehtim draws from the global RNG)
    np.random.seed(seed)  # noqa: NPY002
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            obs = im.observe(
                arr, tint, tadv, 0.0, 24.0, 2e9, mjd=57849, elevmin=10.0, elevmax=85.0,
                ttype="direct", add_th_noise=True, ampcal=True, phasecal=True,
            )  # fmt: skip
    finally:
        np.random.set_state(state)  # noqa: NPY002
    if gain_errors:
        d = obs.data
        rng = np.random.default_rng(seed)
        times, sites = np.unique(d["time"]), list(arr.tarr["site"])
        amp = 1 + 0.1 * rng.standard_normal((len(times), len(sites)))
        gain = amp * np.exp(2j * np.pi * rng.random((len(times), len(sites))))
        t = np.searchsorted(times, d["time"])
        g1 = gain[t, [sites.index(x) for x in d["t1"]]]
        g2 = gain[t, [sites.index(x) for x in d["t2"]]]
        d["vis"] = d["vis"] * g1 * np.conj(g2)
        for k in ("sigma", "qsigma", "usigma", "vsigma"):
            d[k] = d[k] * np.abs(g1 * g2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        obs.save_uvfits(str(path))
    return Path(path)


def write_fastmri_h5(path, kspace, mask=None, reconstruction_rss=None) -> Path:
    """A file in the fastMRI multi-coil layout: ``kspace`` (slices, coils, H, W) complex64, with
    an optional ``mask`` (W,) of the acquired phase-encode lines (unacquired lines are stored as
    zeros, as fastMRI's test sets) and ``reconstruction_rss`` (slices, H, W) float32."""
    import h5py

    kspace = np.asarray(kspace, dtype=np.complex64)
    if kspace.ndim != 4:
        raise ValueError(f"kspace must be (slices, coils, H, W), got shape {kspace.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h:
        if mask is not None:
            mask = np.asarray(mask, dtype=bool).reshape(-1)
            kspace = kspace * mask[None, None, None, :]
            h.create_dataset("mask", data=mask)
        h.create_dataset("kspace", data=kspace)
        if reconstruction_rss is not None:
            h.create_dataset("reconstruction_rss", data=np.asarray(reconstruction_rss, np.float32))
        h.attrs["acquisition"] = "synthetic"
    return Path(path)


def acs_width(mask: np.ndarray) -> int:
    """Width of the contiguous block of acquired lines around the centre (the calibration
    lines)."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    c = len(mask) // 2
    if not mask[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    while hi < len(mask) - 1 and mask[hi + 1]:
        hi += 1
    return hi - lo + 1


class ObservedKSpace(Dataset):
    """Raw multi-coil k-space in the fastMRI HDF5 layout as measured test items (module
    docstring): one item per (file, slice).

    The acquired lines are the file's ``mask`` or, without one, the phase-encode lines (columns)
    holding non-zero data; ``acceleration`` (with ``mask_seed``) undersamples fully sampled
    data retrospectively with the operator's line pattern (``multi_coil_mri.line_mask``). The
    readout (H) is cropped to ``image_size[0]`` in image space (fastMRI's 2x oversampling);
    the phase-encode lines must be ``image_size[1]`` already. ESPIRiT maps are estimated from
    the calibration lines (the central contiguous block, ``calib_width`` at most). The data are
    divided by the 99th-percentile magnitude of their zero-filled coil combination (the MVUE
    normalization of the training data, which needs the full data; recorded as ``scale``).
    Items: ``observation`` (Nc, H, W, 2), ``maps`` (Nc, H, W) complex64, ``mask`` (1, W) bool,
    ``scale``; with ``reference`` (a dataset of the file, e.g. ``reconstruction_rss``) also
    ``target`` (2, H, W) (its magnitude, same normalization) and ``kspace`` instead of
    ``observation``: the harness then scores the usual metrics against it."""

    def __init__(
        self,
        files,
        image_size=(64, 64),
        slices=None,
        acceleration: float | None = None,
        mask_seed: int = 0,
        calib_width: int = 24,
        reference: str | None = None,
        id_list=None,
    ):
        import h5py

        self.paths = _files(files, (".h5", ".hdf5"), "fastMRI HDF5")
        self.size = tuple(int(s) for s in image_size)
        self.acceleration, self.mask_seed = acceleration, int(mask_seed)
        self.calib_width, self.reference = int(calib_width), reference
        items = []
        for p in self.paths:
            with h5py.File(p, "r") as h:
                if "kspace" not in h:
                    raise ValueError(f"{p} has no 'kspace' dataset (fastMRI layout)")
                shape = h["kspace"].shape
                if len(shape) != 4 or not np.iscomplexobj(h["kspace"][:0]):
                    raise ValueError(
                        f"{p}: kspace must be complex (slices, coils, H, W), got {shape}"
                    )
                if shape[3] != self.size[1] or shape[2] < self.size[0]:
                    raise ValueError(
                        f"{p}: k-space of {shape[2]} x {shape[3]} (readout x phase encodes) "
                        f"does not fit the problem's {self.size[0]} x {self.size[1]} images "
                        "(the readout may be cropped, the phase-encode lines must match); "
                        "use a prior and problem.data.image_size of the data's size"
                    )
                if reference is not None and reference not in h:
                    raise ValueError(f"{p} has no {reference!r} dataset for the reference")
            picked = range(shape[0]) if slices is None else range(shape[0])[slice(*slices)]
            items += [(p, s) for s in picked]
        if not items:
            raise ValueError("no k-space slices selected (problem.data.slices)")
        self.items = [items[i] for i in select_ids(id_list, len(items), self.paths[0].parent)]
        self.id_list = list(range(len(self.items)))  # ids are positions in the selection

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import h5py

        from inverse_problems.multi_coil_mri import fft2c, ifft2c, line_mask
        from training.mri import center_crop, espirit_maps, mvue

        path, s = self.items[index]
        with h5py.File(path, "r") as h:
            k = torch.from_numpy(np.asarray(h["kspace"][s])).to(torch.complex128)
            lines = np.asarray(h["mask"][()], dtype=bool) if "mask" in h else None
            ref = None if self.reference is None else np.asarray(h[self.reference][s])
        if lines is None:
            lines = (k.abs().flatten(0, 1).amax(0) > 0).numpy()
        if self.acceleration is not None:
            state = np.random.RandomState(self.mask_seed)
            lines = lines & line_mask(len(lines), float(self.acceleration), "random", state).numpy()
        if not np.isfinite(k.numpy()).all():
            raise ValueError(f"{path} slice {s}: k-space holds NaN or infinite values")
        if k.shape[-2] != self.size[0]:  # crop the readout in image space
            img = ifft2c(k)
            top = (k.shape[-2] - self.size[0]) // 2
            k = fft2c(img[..., top : top + self.size[0], :])
        mask = torch.from_numpy(lines)
        k = k * mask
        calib = min(self.calib_width, acs_width(lines))
        if calib < 8:
            raise ValueError(
                f"{path} slice {s}: {acs_width(lines)} fully sampled central lines; ESPIRiT "
                "needs at least 8 calibration lines"
            )
        maps = espirit_maps(k, calib)
        zero_filled = mvue(k, maps)
        scale = torch.quantile(zero_filled.abs().flatten().float(), 0.99).double()
        k = k / scale
        item = {"maps": maps.to(torch.complex64), "mask": mask[None], "scale": scale}
        if ref is None:
            item["observation"] = torch.view_as_real(k.to(torch.complex128))
        else:
            mag = center_crop(torch.from_numpy(np.abs(ref)).double(), self.size) / scale
            item["target"] = torch.stack([mag, torch.zeros_like(mag)]).float()
            item["kspace"] = k.to(torch.complex64)
        return item
