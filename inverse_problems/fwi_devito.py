"""2-D acoustic wave propagation with Devito, one shot at a time (the FWI worker side).

This module imports numpy and Devito only (no torch), so Dask workers that run it stay light.
Units: metres, milliseconds, km/s (= m/ms) and kHz; grid axes (x, z), z pointing down.

Physics: m u_tt + m eta u_t - Laplace(u) = q, with squared slowness m = 1 / v^2 (ms^2/m^2), a
sponge ``eta`` (1/ms) in ``nbl`` absorbing cells on the left, right and bottom, and a free surface
(u = 0) at z = 0 imposed by odd mirroring into ``space_order / 2`` image rows above it (the
image method). Time: second-order leapfrog; space: ``space_order`` centred differences.
Source: Ricker wavelet of peak frequency f0 with delay 1 / f0; receivers record u at every step
(samples 0 ... nt - 1, nt = tn / dt + 1).

Gradient (adjoint state, Plessix 2006, Geophys. J. Int. 167(2), 495-503): for
J = 1/2 sum_n ||P u^n - d^n||^2 the adjoint field v solves the same wave equation backward in time,
driven by the residual injected at the receivers, and dJ/dm = -sum_n u^n (D_tt v)^n, the discrete
time-summation-by-parts form of -sum_n v^n (D_tt u)^n for the leapfrog scheme; the chain rule to
velocity is dJ/dv = -2 / v^3 dJ/dm.

``Survey.compat = "reference"`` gives InverseBench's discretization instead (same kernels, other
coefficients): the absorbing cells at 1 km/s, Devito's ``Model(bcs='damp')`` profile and its
sponge term eta u_t (forward difference), no sponge term in the imaging condition, and the
time range of Devito's operators (the wavelet's t = 0 sample never injected, the last sample
never recorded, nor injected as a residual); the gradient keeps the physical cells only.

Operators are built and JIT-compiled once per survey (``solver_for``) and reused for every model
and shot: only the model, the source position and the data change between calls. Compiled
kernels and the built solvers live in ``jit_cache_dir`` (a per-user folder).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.signed_pickle import dump_signed, load_signed


@dataclass(frozen=True)
class Survey:
    """Grid, absorbing layer, time axis, source wavelet and acquisition geometry (hashable)."""

    shape: tuple[int, int]  # physical grid points (nx, nz)
    spacing: tuple[float, float]  # (dx, dz) in m
    nbl: int  # absorbing cells on the left, right and bottom
    tn: float  # record length in ms
    dt: float  # time step and sample interval in ms
    f0: float  # Ricker peak frequency in kHz
    sources: tuple[tuple[float, float], ...]  # (x, z) in m, one per shot
    receivers: tuple[tuple[float, float], ...]  # (x, z) in m, shared by all shots
    space_order: int = 4
    free_surface: bool = True
    reflection: float = 1e-3  # target amplitude reflection of the sponge (normal incidence)
    damp_velocity: float = 3.0  # km/s the sponge is tuned for (fixed: eta must not depend on v)
    compat: str = "corrected"  # "reference": InverseBench's frame, sponge and time quirks

    def __post_init__(self):
        if self.compat not in ("reference", "corrected"):
            raise ValueError(f"Survey compat={self.compat!r}: use 'reference' or 'corrected'")

    @property
    def reference(self) -> bool:
        return self.compat == "reference"

    @property
    def nt(self) -> int:
        """Samples per trace, t = 0, dt, ..., tn. The reference's count (Devito's ``TimeAxis``:
        ceil((tn + dt) / dt)) is the same for every tn that is a multiple of dt."""
        if self.reference:
            return math.ceil((self.tn + self.dt) / self.dt)
        return round(self.tn / self.dt) + 1

    @property
    def nshots(self) -> int:
        return len(self.sources)

    @property
    def top(self) -> int:
        """Rows above z = 0: image rows for the free surface, else an absorbing layer."""
        return self.space_order // 2 if self.free_surface else self.nbl

    @property
    def padded_shape(self) -> tuple[int, int]:
        nx, nz = self.shape
        return nx + 2 * self.nbl, nz + self.top + self.nbl

    def ricker(self) -> np.ndarray:
        t = np.arange(self.nt) * self.dt - 1.0 / self.f0
        a = (math.pi * self.f0 * t) ** 2
        return ((1.0 - 2.0 * a) * np.exp(-a)).astype(np.float32)

    #: The reference's velocity in every absorbing cell, km/s: it builds Devito's ``Model`` from
    #: a model of ones and afterwards writes only the physical cells.
    REFERENCE_FRAME_VELOCITY = 1.0

    def pad(self, field: np.ndarray) -> np.ndarray:
        """Extend a physical (nx, nz) field into the padding: by edge replication (corrected),
        or with ``REFERENCE_FRAME_VELOCITY`` whatever the model (reference). Image rows above a
        free surface take either; the mirror overwrites the wavefield there."""
        nbl = self.nbl
        widths = ((nbl, nbl), (self.top, nbl))
        if self.reference:
            return np.pad(
                field, widths, mode="constant", constant_values=self.REFERENCE_FRAME_VELOCITY
            )
        return np.pad(field, widths, mode="edge")

    def unpad_adjoint(self, padded: np.ndarray) -> np.ndarray:
        """The transpose of ``pad``: each padding cell's value added to the edge cell it copies
        (corrected), or the physical cells alone (reference: the frame does not depend on the
        model). Image rows above a free surface are dropped (the mirror overwrites them, so the
        model there has no effect)."""
        nx, nz = self.shape
        nxp, nzp = self.padded_shape
        if self.reference:
            return np.array(padded[self.nbl : self.nbl + nx, self.top : self.top + nz], np.float64)
        padded = np.array(padded, np.float64, copy=True)
        if self.free_surface:
            padded[:, : self.top] = 0.0
        ix = np.clip(np.arange(nxp) - self.nbl, 0, nx - 1)
        iz = np.clip(np.arange(nzp) - self.top, 0, nz - 1)
        out = np.zeros((nx, nz), np.float64)
        np.add.at(out, (ix[:, None], iz[None, :]), padded)
        return out

    def damping(self) -> np.ndarray:
        """Sponge coefficient on the padded grid (``corrected_damping`` or
        ``reference_damping``)."""
        return self.reference_damping() if self.reference else self.corrected_damping()

    def reference_damping(self) -> np.ndarray:
        """The reference's sponge: Devito's ``examples.seismic`` ``Model(bcs='damp')`` profile, in
        every padding cell k = 1 ... nbl counted from the inner edge of a layer (nbl + 1 at the
        outer edge), summed over the axes:
        eta = 1.5 ln(1000) / nbl (p - sin(2 pi p) / (2 pi)) / h,  p = (k + 1) / nbl,
        h the spacing in m along the axis (so eta is in 1/m, used as a 1/ms rate: the reference's
        term is eta u_t, not m eta u_t; see ``coefficients``). No layer above a free surface."""
        nx, nz = self.shape
        dx, dz = self.spacing
        nbl, top = self.nbl, self.top
        eta = np.zeros(self.padded_shape, np.float64)
        if not nbl:
            return eta.astype(np.float32)
        coeff = 1.5 * math.log(1.0 / 0.001) / nbl

        def ramp(k):  # k = distance from the inner edge, 1 ... nbl
            p = (k + 1.0) / nbl
            return coeff * (p - np.sin(2.0 * np.pi * p) / (2.0 * np.pi))

        ix = np.arange(nx + 2 * nbl)
        kx = np.maximum(nbl - ix, 0) + np.maximum(ix - (nx + nbl - 1), 0)
        eta += np.where(kx > 0, ramp(kx), 0.0)[:, None] / dx
        iz = np.arange(nz + top + nbl)
        kz = np.maximum(iz - (top + nz - 1), 0)
        if not self.free_surface:
            kz = kz + np.maximum(top - iz, 0)
        eta += np.where(kz > 0, ramp(kz), 0.0)[None, :] / dz
        return eta.astype(np.float32)

    def coefficients(self, vpad: np.ndarray):
        """Per-cell leapfrog coefficients (c1, c2, c3) of u+ = c1 u + c2 u- + c3 (Laplace(u) + q)
        for the padded velocity ``vpad`` (km/s), float64.

        corrected: m u_tt + m eta u_t - Laplace(u) = q with a centred u_t:
        c1 = 2 / a, c2 = -(2 - a) / a, c3 = dt^2 v^2 / a, a = 1 + eta dt / 2.
        reference: m u_tt + eta u_t - Laplace(u) = q with Devito's forward difference
        u_t = (u+ - u) / dt (what ``examples.seismic.acoustic`` builds for time order 2):
        c1 = (2 + b) / (1 + b), c2 = -1 / (1 + b), c3 = dt^2 v^2 / (1 + b), b = eta v^2 dt.
        The adjoint runs the same update backward in time (the transpose of either scheme)."""
        dt = self.dt
        eta = self.damping().astype(np.float64)
        v2 = np.asarray(vpad, np.float64) ** 2
        if self.reference:
            b = eta * v2 * dt
            return (2.0 + b) / (1.0 + b), -1.0 / (1.0 + b), dt**2 * v2 / (1.0 + b)
        a = 1.0 + 0.5 * dt * eta
        return 2.0 / a, -(2.0 - a) / a, dt**2 * v2 / a

    def gradient_damping(self) -> np.ndarray:
        """The sponge term of the imaging condition dJ/dm = -sum_n u^n (D_tt v - eta D_t v)^n: the
        sponge's eta (corrected: the sponge term m eta u_t depends on m), or zero (reference:
        its gradient is -sum u D_tt v, and its sponge term eta u_t does not depend on m)."""
        if self.reference:
            return np.zeros(self.padded_shape, np.float32)
        return self.corrected_damping()

    def corrected_damping(self) -> np.ndarray:
        """Sponge coefficient eta (1/ms) on the padded grid: quadratic ramps whose round-trip
        attenuation exp(-int eta dt / 2) is ``reflection`` at normal incidence for waves of
        ``damp_velocity``. It does not depend on the model, so the gradient has no term from it."""
        nx, nz = self.shape
        dx, dz = self.spacing
        nbl, top = self.nbl, self.top
        log_r = math.log(1.0 / self.reflection)
        # distance into the layer, in cells, along x and z (0 inside the physical domain)
        ix = np.arange(nx + 2 * nbl)
        iz = np.arange(nz + top + nbl)
        depth_x = np.maximum(nbl - ix, 0) + np.maximum(ix - (nx + nbl - 1), 0)
        depth_z = np.maximum(iz - (top + nz - 1), 0)
        if not self.free_surface:
            depth_z = depth_z + np.maximum(top - iz, 0)
        eta = np.zeros(self.padded_shape, np.float32)
        if nbl:
            # 1/2 int eta ds / v over a round trip (2 * integral of (d/L)^2 = 2L/3) = log(1/R)
            v = self.damp_velocity
            eta += (3.0 * v * log_r / (2.0 * nbl * dx)) * (depth_x[:, None] / nbl) ** 2
            eta += (3.0 * v * log_r / (2.0 * nbl * dz)) * (depth_z[None, :] / nbl) ** 2
        return eta.astype(np.float32)


def jit_cache_dir() -> Path:
    """Per-user folder for Devito's compiled kernels: ``$INVERSEBENCH_CACHE/devito``, else
    ``$XDG_CACHE_HOME/inversebench/devito`` (default ``~/.cache``)."""
    root = os.environ.get("INVERSEBENCH_CACHE")
    if root:
        return Path(root) / "devito"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "inversebench" / "devito"


def _configure_devito():
    """Import Devito quietly, with its JIT cache in ``jit_cache_dir`` and a clear error when the
    C compiler it needs is missing."""
    os.environ.setdefault("DEVITO_LOGGING", "ERROR")
    import devito

    compiler = devito.configuration["compiler"]
    cc = getattr(compiler, "CC", None) or getattr(compiler, "cc", None) or "gcc"
    if shutil.which(str(cc).split()[0]) is None:
        raise RuntimeError(
            f"Devito needs a C compiler to build the wave-equation kernels, and {cc!r} is not on "
            "PATH. Install one (e.g. `apt install gcc`) or point DEVITO_ARCH / CC at one."
        )
    cache = jit_cache_dir()
    jit_dir, codepy_dir = cache / "jit", cache / "codepy"
    jit_dir.mkdir(parents=True, exist_ok=True)
    codepy_dir.mkdir(parents=True, exist_ok=True)
    # Operators compile with copies of the configured compiler (``__new_with__``), so the
    # folders are set on the class: every Devito compiler in this process uses them.
    from devito.arch.compiler import Compiler

    Compiler.get_jit_dir = lambda self: jit_dir
    Compiler.get_codepy_dir = lambda self: codepy_dir
    return devito


class ShotSolver:
    """Devito operators for one survey: forward (traces only), forward with the wavefield saved,
    and adjoint plus gradient. Built lazily, reused for every model and shot."""

    def __init__(self, survey: Survey):
        dv = _configure_devito()
        self.survey = s = survey
        nxp, nzp = s.padded_shape
        dx, dz = s.spacing
        origin = (-s.nbl * dx, -s.top * dz)
        extent = ((nxp - 1) * dx, (nzp - 1) * dz)
        self.grid = grid = dv.Grid(shape=(nxp, nzp), extent=extent, origin=origin, dtype=np.float32)
        so = s.space_order
        # The leapfrog update u+ = c1 u + c2 u- + c3 (Laplace(u) + q), with per-cell coefficients
        # set from the model in numpy (no division per point and step in the kernels; the
        # sponge's form depends on the survey's compat: Survey.coefficients). ``eta`` is the
        # sponge term of the imaging condition (Survey.gradient_damping).
        self.c1 = dv.Function(name="c1", grid=grid, space_order=0)
        self.c2 = dv.Function(name="c2", grid=grid, space_order=0)
        self.c3 = dv.Function(name="c3", grid=grid, space_order=so)  # read at sources too
        self.eta = dv.Function(name="eta", grid=grid, space_order=0)
        self.wavelet = s.ricker()
        # Time levels are offset by one: level 0 is the zero state before the start, level n + 1
        # holds sample n (so the saved wavefield's second difference never reads level -1).
        # Every time-indexed object has nt + 2 levels, the saved wavefield's length.
        nt, nrec = s.nt + 2, len(s.receivers)
        self.src = dv.SparseTimeFunction(name="src", grid=grid, npoint=1, nt=nt)
        self.rec = dv.SparseTimeFunction(name="rec", grid=grid, npoint=nrec, nt=nt)
        self.rec.coordinates.data[:] = np.asarray(s.receivers, np.float32)
        self.src.data[1 : s.nt + 1, 0] = self.wavelet
        if s.reference:
            # Devito's default time range for the reference's operators starts at step 1: the
            # wavelet's first sample (t = 0) is never injected
            self.src.data[1, 0] = 0.0
        self.eta.data[:] = s.gradient_damping()
        self._ops = {}
        self._fields = {}
        self._dv = dv

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_dv", None)  # a module: re-imported (and configured) on load
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._dv = _configure_devito()

    # -- building --------------------------------------------------------------------------------
    def build(self) -> ShotSolver:
        """Lower all three operators now (they are otherwise built on first use)."""
        self._forward_op(False)
        self._forward_op(True)
        self._adjoint_op()
        return self

    def _free_surface(self, field, forward: bool):
        """u = 0 on z = 0 and odd images above it, for the time level just computed."""
        dv = self._dv
        if not self.survey.free_surface:
            return []
        t = field.indices[0]  # the modulo stepping dimension, or time itself when saved
        x, _ = self.grid.dimensions
        top = self.survey.top
        lvl = t + 1 if forward else t - 1
        eqs = [dv.Eq(field[lvl, x, top], 0)]
        eqs += [dv.Eq(field[lvl, x, top - k], -field[lvl, x, top + k]) for k in range(1, top + 1)]
        return eqs

    def _wavefield(self, name: str, save: bool):
        key = (name, save)
        if key not in self._fields:
            kw = {"save": self.survey.nt + 2} if save else {}
            self._fields[key] = self._dv.TimeFunction(
                name=name, grid=self.grid, time_order=2, space_order=self.survey.space_order, **kw
            )
        return self._fields[key]

    def _forward_op(self, save: bool):
        key = ("forward", save)
        if key not in self._ops:
            dv, c1, c2, c3 = self._dv, self.c1, self.c2, self.c3
            u = self._wavefield("u", save)
            # m u_tt + m eta u_t - Laplace(u) = q by leapfrog, solved for u.forward
            eqs = [dv.Eq(u.forward, c1 * u + c2 * u.backward + c3 * u.laplace)]
            eqs += self.src.inject(field=u.forward, expr=self.src * c3)
            eqs += self._free_surface(u, forward=True)
            eqs += self.rec.interpolate(expr=u)
            self._ops[key] = dv.Operator(eqs, name=f"fwd{int(save)}")
        return self._ops[key]

    def _adjoint_op(self):
        if "adjoint" not in self._ops:
            dv, c1, c2, c3, eta = self._dv, self.c1, self.c2, self.c3, self.eta
            u = self._wavefield("u", True)
            v = self._wavefield("v", False)
            self.grad = dv.Function(name="grad", grid=self.grid)
            self.resid = dv.SparseTimeFunction(
                name="resid",
                grid=self.grid,
                npoint=len(self.survey.receivers),
                nt=self.survey.nt + 2,
            )
            self.resid.coordinates.data[:] = np.asarray(self.survey.receivers, np.float32)
            # m v_tt - m eta v_t - Laplace(v) = P^T r backward in time: the same coefficients
            eqs = [dv.Eq(v.backward, c1 * v + c2 * v.forward + c3 * v.laplace)]
            eqs += self.resid.inject(field=v.backward, expr=self.resid * c3)
            eqs += self._free_surface(v, forward=False)
            # dJ/dm = sum_n lambda^n (D_tt u + eta D_t u)^n with lambda = -v, summed by parts
            eqs += [dv.Inc(self.grad, -u * (v.dt2 - eta * v.dt))]
            self._ops["adjoint"] = dv.Operator(eqs, name="adjoint")
        return self._ops["adjoint"]

    # -- running ---------------------------------------------------------------------------------
    def _set_model(self, vp: np.ndarray) -> None:
        s = self.survey
        vp = np.asarray(vp, np.float32)
        if vp.shape != tuple(s.shape):
            raise ValueError(f"velocity model has shape {vp.shape}, the survey expects {s.shape}")
        if not np.all(np.isfinite(vp)) or vp.min() <= 0:
            raise ValueError("velocity model must be finite and positive (km/s)")
        c1, c2, c3 = s.coefficients(s.pad(vp))
        self.c1.data[:] = c1
        self.c2.data[:] = c2
        self.c3.data[:] = c3

    def _run_forward(self, shot: int, save: bool) -> np.ndarray:
        s = self.survey
        op = self._forward_op(save)
        u = self._wavefield("u", save)
        # the scheme reads levels 0 and 1 first and overwrites every later level's interior (its
        # halo is never written), so a saved wavefield needs only those two cleared
        if save:
            u.data_with_halo[:2] = 0.0
        else:
            u.data_with_halo[:] = 0.0
        self.rec.data[:] = 0.0
        self.src.coordinates.data[0] = np.asarray(s.sources[shot], np.float32)
        op.apply(time_m=1, time_M=s.nt, dt=s.dt)
        traces = np.array(self.rec.data[1 : s.nt + 1], dtype=np.float32, copy=True)
        if s.reference:
            # ... and ends one step early: the last sample is never recorded (stays 0)
            traces[-1] = 0.0
        return traces

    def forward(self, vp: np.ndarray, shots) -> np.ndarray:
        """Traces (len(shots), nt, nrec) of the velocity model vp (nx, nz) in km/s."""
        self._set_model(vp)
        return np.stack([self._run_forward(int(i), save=False) for i in shots])

    def gradient(self, vp: np.ndarray, shots, observed: np.ndarray):
        """Misfit 1/2 sum ||d - observed||^2 over ``shots`` and its gradient with respect to vp
        (nx, nz), both float64; ``observed`` is (len(shots), nt, nrec)."""
        s = self.survey
        self._set_model(vp)
        op = self._adjoint_op()
        v = self._wavefield("v", False)
        total = np.zeros(s.padded_shape, np.float64)
        misfit = 0.0
        for k, shot in enumerate(shots):
            traces = self._run_forward(int(shot), save=True)
            residual = traces - observed[k]
            misfit += 0.5 * float(np.sum(residual.astype(np.float64) ** 2))
            v.data[:] = 0.0
            self.grad.data[:] = 0.0
            self.resid.data[1 : s.nt + 1] = residual
            if s.reference:  # the reference's adjoint never injects the last sample either
                self.resid.data[s.nt] = 0.0
            op.apply(time_m=2, time_M=s.nt, dt=s.dt)
            total += self.grad.data
        grad_m = s.unpad_adjoint(total)
        grad_v = -2.0 * grad_m / np.asarray(vp, np.float64) ** 3
        return misfit, grad_v


_SOLVERS: dict[Survey, ShotSolver] = {}


def _solver_file(survey: Survey) -> Path:
    """Where the built solver for ``survey`` is kept: keyed by the survey (its compat mode
    included), Devito's version and this module's source, so a change to any of them builds
    afresh."""
    import devito

    key = hashlib.sha256()
    key.update(repr(survey).encode())
    key.update(devito.__version__.encode())
    key.update(Path(__file__).read_bytes())
    return jit_cache_dir() / "solvers" / f"{key.hexdigest()[:32]}.pkl"


def solver_for(survey: Survey) -> ShotSolver:
    """This process's solver for ``survey``.

    Lowering Devito's three operators takes seconds each (sympy), in every process that needs
    them; so a built solver (operators and small coefficient fields, no wavefields) is pickled
    next to the compiled kernels and later processes -- every Dask worker, every run -- load it
    in well under a second. A file that is unreadable or not signed by this user is rebuilt and
    replaced (written atomically).
    """
    if survey in _SOLVERS:
        return _SOLVERS[survey]
    # configure (quiet logging, cache folders) before unpickling imports Devito with its defaults
    _configure_devito()
    path = _solver_file(survey)
    # only files this user's processes signed are unpickled (utils/signed_pickle.py): a file
    # placed in the cache by anyone else is ignored and rebuilt
    solver = load_signed(path)
    if not isinstance(solver, ShotSolver):
        solver = ShotSolver(survey)
        solver.build()
        dump_signed(solver, path)
    _SOLVERS[survey] = solver
    return solver


def forward_task(survey: Survey, vp: np.ndarray, shots) -> np.ndarray:
    """Dask task: traces of ``shots`` for one model."""
    return solver_for(survey).forward(vp, shots)


def gradient_task(survey: Survey, vp: np.ndarray, shots, observed: np.ndarray):
    """Dask task: misfit and velocity gradient of ``shots`` for one model."""
    return solver_for(survey).gradient(vp, shots, observed)
