"""Event Horizon Telescope geometry for black-hole imaging: uv coverage, the image-to-visibility
DFT, and minimal independent sets of closure phases and log closure amplitudes.

* uv coverage comes from ehtim (``Array.obsdata``: station positions, the source's track over the
  night, elevation limits, thermal noise from the SEFDs) or from a uvfits file. ehtim is used only
  here, always without NFFT (pynfft cannot be installed beside numpy 2).
* The DFT follows ehtim's ``ftmatrix`` convention to round-off: pixel centres
  x_k = (n/2 - 1/2 - k) * psize (right ascension grows to the left, the first row is the top),
  V(u, v) = P(u, v) sum_k I_k exp(+2 pi i (u x_k + v y_k)), with P the Fourier transform of
  ehtim's default triangle pulse (sinc^2 per axis).
* Closure sets (Blackburn et al., ApJ 894, 2020; Chael et al., ApJ 857, 2018) are built per time
  stamp from the baselines present: candidates are all triangles (phases) and all quadrangles
  in their three pairings (amplitudes), ordered so that the most sensitive stations come first,
  and kept greedily while linearly independent as combinations of baseline phases (log
  amplitudes). The result has the minimal sizes (N-1)(N-2)/2 and N(N-3)/2 for N stations and
  each closure is invariant to station phase (gain) errors.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.io import atomic_torch_save, user_cache_dir

RADPERUAS = math.pi / 180.0 / 3600.0 / 1e6

#: M87* (J2000) and the EHT 2017 observing frequency and bandwidth.
M87 = {"ra": 12.513728717, "dec": 12.39112324}


@dataclass(frozen=True)
class UVCoverage:
    """Visibility sampling of one observation: per visibility its time (h), the two stations
    (indices into ``stations``), (u, v) in wavelengths and the thermal noise sigma in Jy."""

    stations: tuple[str, ...]
    time: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    u: np.ndarray
    v: np.ndarray
    sigma: np.ndarray
    #: the observation's source and set-up (ra h, dec deg, rf Hz, bw Hz, mjd, tint s)
    source: dict = field(default_factory=dict)
    #: integration time per visibility (s) and the stations' SEFDs (S, 2: R, L) in Jy, from
    #: which ehtim recomputes the thermal noise when it simulates an observation
    tint: np.ndarray | None = None
    sefd: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.u)

    def first_fraction(self, ratio: float) -> UVCoverage:
        """The visibilities of the first ``ratio`` of the time stamps (the reference's
        ``observation_time_ratio``: the first int(ratio T) of T stamps, at least one)."""
        if not 0 < ratio <= 1:
            raise ValueError(f"observation_time_ratio must be in (0, 1], got {ratio}")
        times = np.unique(self.time)
        keep = self.time <= times[max(int(len(times) * ratio), 1) - 1]
        return UVCoverage(
            self.stations,
            *(a[keep] for a in (self.time, self.t1, self.t2, self.u, self.v, self.sigma)),
            source=self.source,
            tint=None if self.tint is None else self.tint[keep],
            sefd=self.sefd,
        )

    def thermal_sigma(self) -> np.ndarray:
        """The Stokes I thermal noise ehtim's ``observe_same`` adds (``obs_simulate.add_noise``):
        recomputed from the SEFDs, bandwidth and integration times as
        0.5 sqrt(s_RR^2 + s_LL^2), s = sqrt(SEFD_1 SEFD_2 / (2 bw tint)) / 0.88 (2-bit
        quantization), with ehtim's pairing (RR: R_1 R_2, LL: R_1 L_2); ``sigma`` itself where an
        SEFD is unknown or not positive (as ehtim). This can differ from the file's ``sigma``
        (by up to 4 % on the EHT 2017 coverage saved by ehtim)."""
        if self.sefd is None or self.tint is None or np.any(self.sefd[:, 0] <= 0):
            return self.sigma
        bw = float(self.source["bw"])
        r1, r2, l2 = self.sefd[self.t1, 0], self.sefd[self.t2, 0], self.sefd[self.t2, 1]
        rr = np.sqrt(r1 * r2 / (2 * bw * self.tint)) / 0.88
        ll = np.sqrt(r1 * l2 / (2 * bw * self.tint)) / 0.88
        return 0.5 * np.sqrt(rr**2 + ll**2)


_FIELDS = ("time", "t1", "t2", "u", "v", "sigma", "tint", "sefd")


def _from_obsdata(obs) -> UVCoverage:
    names = tuple(str(s) for s in obs.tarr["site"])
    index = {s: i for i, s in enumerate(names)}
    d = obs.data
    return UVCoverage(
        names,
        np.asarray(d["time"], dtype=np.float64),
        np.array([index[str(s)] for s in d["t1"]]),
        np.array([index[str(s)] for s in d["t2"]]),
        np.asarray(d["u"], dtype=np.float64),
        np.asarray(d["v"], dtype=np.float64),
        np.asarray(d["sigma"], dtype=np.float64),
        source={
            "ra": float(obs.ra),
            "dec": float(obs.dec),
            "rf": float(obs.rf),
            "bw": float(obs.bw),
            "mjd": int(obs.mjd),
            "tint": float(np.median(d["tint"])),
        },
        tint=np.asarray(d["tint"], dtype=np.float64),
        sefd=np.stack([np.asarray(obs.tarr[k], dtype=np.float64) for k in ("sefdr", "sefdl")], 1),
    )


def simulate_coverage(
    array_file,
    ra: float = M87["ra"],
    dec: float = M87["dec"],
    rf: float = 230e9,
    bw: float = 2e9,
    tint: float = 60.0,
    tadv: float = 600.0,
    tstart: float = 0.0,
    tstop: float = 24.0,
    mjd: int = 57849,
    elevmin: float = 10.0,
    elevmax: float = 85.0,
) -> UVCoverage:
    """uv coverage of an observing night with ehtim from a station table (ehtim's text format:
    name, geocentric X Y Z in m, SEFDs in Jy, ...). Defaults: M87* on 2017 April 6 (MJD 57849)
    at 230 GHz, 2 GHz bandwidth, 60 s integrations every 10 minutes over 24 h, elevations
    10-85 degrees (with the EHT 2017 M87 table: 837 visibilities). Cached in the user cache
    (``utils.io.user_cache_dir``), keyed by the table's content and the parameters."""
    array_file = Path(array_file)
    if not array_file.is_file():
        raise FileNotFoundError(
            f"station table {array_file} not found (the EHT 2017 tables ship in data/eht/)"
        )
    params = (ra, dec, rf, bw, tint, tadv, tstart, tstop, mjd, elevmin, elevmax)
    stamp = repr(("coverage-v3", params)).encode()  # bump when the cached fields change
    key = hashlib.sha256(array_file.read_bytes() + stamp).hexdigest()[:16]
    cache = user_cache_dir() / "eht" / f"coverage_{key}.pt"
    if cache.is_file():  # ehtim's import and track computation take seconds
        saved = torch.load(cache, weights_only=True)
        return UVCoverage(
            tuple(saved["stations"]),
            *(saved[k].numpy() for k in _FIELDS[:6]),
            source=dict(saved["source"]),
            tint=saved["tint"].numpy(),
            sefd=saved["sefd"].numpy(),
        )
    import ehtim as eh

    arr = eh.array.load_txt(str(array_file))
    obs = arr.obsdata(
        ra, dec, rf, bw, tint, tadv, tstart, tstop, mjd=mjd, timetype="UTC",
        elevmin=elevmin, elevmax=elevmax,
    )  # fmt: skip
    cov = _from_obsdata(obs)
    saved = {k: torch.from_numpy(np.ascontiguousarray(getattr(cov, k))) for k in _FIELDS}
    atomic_torch_save({"stations": list(cov.stations), "source": cov.source, **saved}, cache)
    return cov


def read_uvfits(path) -> UVCoverage:
    """uv coverage and sigmas of a uvfits observation (the reference's ``obs.uvfits``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"uvfits observation {path} not found")
    import ehtim as eh

    return _from_obsdata(eh.obsdata.load_uvfits(str(path)))


def triangle_pulse(k: torch.Tensor, psize: float) -> torch.Tensor:
    """Fourier transform of a triangle pulse of width ``psize`` at angular frequency k:
    sinc^2(k psize / 2) (ehtim's ``trianglePulse_F``)."""
    half = k * (psize / 2.0)
    safe = torch.where(half == 0, torch.ones_like(half), half)
    return torch.where(half == 0, torch.ones_like(half), (torch.sin(safe) / safe) ** 2)


def dft_matrix(u, v, npix: int, psize: float, dtype=torch.complex128) -> torch.Tensor:
    """(m, npix * npix) matrix from a row-major image (rows top to bottom, right ascension
    decreasing to the right) to visibilities at (u, v) wavelengths; ``psize`` in radians."""
    u = torch.as_tensor(u, dtype=torch.float64)
    v = torch.as_tensor(v, dtype=torch.float64)
    pos = (npix / 2.0 - 0.5 - torch.arange(npix, dtype=torch.float64)) * psize
    phase_x = torch.exp(2j * math.pi * u[:, None] * pos[None, :])  # (m, npix) columns
    phase_y = torch.exp(2j * math.pi * v[:, None] * pos[None, :])  # (m, npix) rows
    pulse = triangle_pulse(2 * math.pi * u, psize) * triangle_pulse(2 * math.pi * v, psize)
    mat = pulse[:, None, None] * phase_y[:, :, None] * phase_x[:, None, :]
    return mat.reshape(len(u), npix * npix).to(dtype)


@dataclass(frozen=True)
class ClosureSets:
    """Closure phases: ``cp_index`` (c, 3) visibility indices with ``cp_sign`` (c, 3) in {+1, -1}
    (phase = sum sign * arg V; -1 takes the conjugate baseline). Log closure amplitudes:
    ``ca_index`` (l, 4) with ``ca_sign`` (l, 4) (log camp = sum sign * log |V|)."""

    cp_index: np.ndarray
    cp_sign: np.ndarray
    ca_index: np.ndarray
    ca_sign: np.ndarray


def _independent(rows: list[np.ndarray], candidates, keep: list) -> None:
    """Greedy: append candidate (vector, payload) pairs whose vector is independent of ``rows``
    (modified Gram-Schmidt with a relative tolerance)."""
    for vec, payload in candidates:
        r = vec.astype(np.float64)
        for q in rows:
            r = r - (q @ r) * q
        norm = np.linalg.norm(r)
        if norm > 1e-8 * np.linalg.norm(vec):
            rows.append(r / norm)
            keep.append(payload)


def _combination(idx, signs, col: dict, size: int) -> np.ndarray:
    """The closure as a vector of coefficients on the time stamp's baselines."""
    vec = np.zeros(size)
    for r, s in zip(idx, signs):
        vec[col[r]] += s
    return vec


def closure_sets(cov: UVCoverage) -> ClosureSets:
    """Minimal independent closure phases and log closure amplitudes, per time stamp."""
    cp_index, cp_sign, ca_index, ca_sign = [], [], [], []
    for t in np.unique(cov.time):
        rows = np.flatnonzero(cov.time == t)
        baseline = {}
        for r in rows:
            a, b = int(cov.t1[r]), int(cov.t2[r])
            baseline[(a, b)] = (r, 1)
            baseline[(b, a)] = (r, -1)
        stations = sorted({int(cov.t1[r]) for r in rows} | {int(cov.t2[r]) for r in rows})
        # most sensitive first: a station's mean thermal sigma over its baselines at this time
        noise = {s: np.mean([cov.sigma[r] for r in rows if s in (cov.t1[r], cov.t2[r])])
                 for s in stations}  # fmt: skip
        stations.sort(key=lambda s: (noise[s], s))
        col = {r: i for i, r in enumerate(rows)}

        tri = []
        for a, b, c in itertools.combinations(stations, 3):
            if all(p in baseline for p in ((a, b), (b, c), (c, a))):
                pairs = ((a, b), (b, c), (c, a))
                idx = [baseline[p][0] for p in pairs]
                sgn = [baseline[p][1] for p in pairs]
                tri.append((_combination(idx, sgn, col, len(rows)), (idx, sgn)))
        keep: list = []
        _independent([], tri, keep)
        for idx, sgn in keep:
            cp_index.append(idx)
            cp_sign.append(sgn)

        quad = []
        for a, b, c, d in itertools.combinations(stations, 4):
            for p, q, r, s in ((a, b, c, d), (a, c, b, d), (a, d, b, c)):
                # |V_pq| |V_rs| / (|V_pr| |V_qs|)
                pairs = ((p, q), (r, s), (p, r), (q, s))
                if all(x in baseline for x in pairs):
                    idx = [baseline[x][0] for x in pairs]
                    sgn = [1, 1, -1, -1]  # amplitudes: the orientation does not matter
                    quad.append((_combination(idx, sgn, col, len(rows)), (idx, sgn)))
        keep = []
        _independent([], quad, keep)
        for idx, sgn in keep:
            ca_index.append(idx)
            ca_sign.append(sgn)

    def arr(x, width):
        return np.asarray(x, dtype=np.int64).reshape(-1, width)

    return ClosureSets(arr(cp_index, 3), arr(cp_sign, 3), arr(ca_index, 4), arr(ca_sign, 4))


def ehtim_closure_sets(cov: UVCoverage) -> ClosureSets:
    """ehtim's minimal closure sets (``Obsdata.bispectra(count='min')`` and
    ``Obsdata.c_amplitudes(count='min')``, ``obs_helpers.tri_minimal_set`` /
    ``quad_minimal_set``), in ehtim's order, as InverseBench's ``BlackHoleImaging`` indexes them:
    per time stamp (ascending), the stations present are taken in the array table's order and
    the first is the reference station r;

    * triangles (r, a, b) for the pairs a < b of the others, phase arg V_ra + arg V_ab + arg V_br;
    * quadrangles (r, s_i, s_j, s_k) for i = 3 .. n-1, j = 1 .. i-1, k = 1 if j = i-1 else j+1,
      log |V_r,si| + log |V_sj,sk| - log |V_r,sk| - log |V_si,sj| (ehtim's (12)(34)/(14)(23));

    a closure whose baselines are not all present is skipped (so the sets are minimal only where
    the reference station sees every other station), and time stamps with fewer than four
    stations have no closure amplitudes. A baseline stored the other way round enters conjugated
    (sign -1)."""
    cp_index, cp_sign, ca_index, ca_sign = [], [], [], []
    for t in np.unique(cov.time):
        rows = np.flatnonzero(cov.time == t)
        baseline = {}
        for r in rows:
            a, b = int(cov.t1[r]), int(cov.t2[r])
            baseline[(a, b)] = (int(r), 1)
            baseline[(b, a)] = (int(r), -1)
        present = {int(cov.t1[r]) for r in rows} | {int(cov.t2[r]) for r in rows}
        sites = [s for s in range(len(cov.stations)) if s in present]  # the table's order
        ref = sites[0]
        for a, b in itertools.combinations(sites[1:], 2):
            pairs = ((ref, a), (a, b), (b, ref))
            if all(p in baseline for p in pairs):
                cp_index.append([baseline[p][0] for p in pairs])
                cp_sign.append([baseline[p][1] for p in pairs])
        if len(sites) < 4:
            continue
        for i in range(3, len(sites)):
            for j in range(1, i):
                k = 1 if j == i - 1 else j + 1
                q = (ref, sites[i], sites[j], sites[k])
                pairs = ((q[0], q[1]), (q[2], q[3]), (q[0], q[3]), (q[1], q[2]))
                if all(p in baseline for p in pairs):
                    ca_index.append([baseline[p][0] for p in pairs])
                    ca_sign.append([1, 1, -1, -1])

    def arr(x, width):
        return np.asarray(x, dtype=np.int64).reshape(-1, width)

    return ClosureSets(arr(cp_index, 3), arr(cp_sign, 3), arr(ca_index, 4), arr(ca_sign, 4))


# -- measured data -------------------------------------------------------------------------------
#: Baselines shorter than this (wavelengths) are "zero baselines": they resolve 1 / 1e7 rad =
#: 20 mas, 100 times any black-hole field here, so their amplitude is the total compact flux
#: (ALMA-APEX, 2.6 km, and JCMT-SMA, 160 m, at 230 GHz: 2e6 and 1.2e5 wavelengths).
ZERO_BASELINE = 1e7


@dataclass(frozen=True)
class MeasuredVisibilities:
    """A prepared observation: its coverage (the file's own station codes, times, (u, v) and
    thermal sigmas in Jy), the Stokes I visibilities ``vis`` (complex, Jy) on it and the total
    flux ``zero_baseline_flux`` (Jy; the median amplitude on the zero baselines, None without
    any), with the zero baselines and autocorrelations removed."""

    path: str
    coverage: UVCoverage
    vis: np.ndarray
    zero_baseline_flux: float | None


def load_measured(
    path, scan_average: bool = True, zero_baseline: float = ZERO_BASELINE
) -> MeasuredVisibilities:
    """Read a uvfits observation with ehtim and prepare it as the EHT imaging pipelines do
    (EHT Collaboration, ApJL 875 L4, 2019, Sect. 5): Stokes I, autocorrelations and rows with
    non-finite or non-positive sigmas dropped, coherent averaging over scans (``add_scans``,
    ``avg_coherent(scan_avg=True)``; the file's own thermal sigmas, propagated by ehtim), the
    total flux read off the zero baselines (shorter than ``zero_baseline`` wavelengths, whatever
    the stations are called) and those baselines flagged: they carry no structure on the field
    and their closures are trivial. Nothing is downloaded; ``path`` is a local file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"uvfits observation {path} not found")
    import contextlib
    import io

    import ehtim as eh

    with contextlib.redirect_stdout(io.StringIO()):  # ehtim narrates every step
        try:
            obs = eh.obsdata.load_uvfits(str(path))
        except Exception as err:  # ehtim's own errors say little about the file
            raise ValueError(f"{path} is not a uvfits observation ehtim can read: {err}") from err
        d = obs.data
        keep = (d["t1"] != d["t2"]) & np.isfinite(d["vis"]) & np.isfinite(d["sigma"])
        keep &= d["sigma"] > 0
        obs.data = d[keep]
        if not len(obs.data):
            raise ValueError(f"{path} holds no finite cross-correlation visibilities")
        if scan_average:
            obs.add_scans()
            obs = obs.avg_coherent(0.0, scan_avg=True)
        uvdist = np.hypot(obs.data["u"], obs.data["v"])
        short = uvdist < zero_baseline
        flux = float(np.median(np.abs(obs.data["vis"][short]))) if short.any() else None
        if short.all():
            raise ValueError(
                f"{path}: every baseline is shorter than {zero_baseline:g} wavelengths"
            )
        obs.data = obs.data[~short]
    return MeasuredVisibilities(
        str(path), _from_obsdata(obs), np.asarray(obs.data["vis"], dtype=np.complex128), flux
    )
