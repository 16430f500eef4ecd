"""Full-waveform inversion: 2-D acoustic seismic data from a velocity model (InverseBench "fwi").

Unknown: the P-wave velocity v on an (H, W) = (nz, nx) grid, z pointing down; normalized as
x = v / unnorm_scale - unnorm_shift (the reference: v in km/s minus 3, so [-1.5, 1.5]).
Forward map: for each of ``nshots`` Ricker sources (``f0`` kHz) on the line z = ``src_depth``,
the pressure recorded by ``nreceivers`` receivers on z = ``rec_depth`` every ``dt`` ms up to
``tn`` ms, simulated with Devito (fwi_devito.py: space order 4, sponge layers of ``nbl`` cells,
free surface at z = 0); measurements (R, nshots, nt, nreceivers) float32, noise-free by default.

Gradient: adjoint state, not autograd, for any batch of models (rows). ``loss`` is the harness's
||A(x) - y||^2 in compat=corrected, and the reference's 1/2 ||A(x) - y||^2 in compat=reference.

compat (docs/deviations.md): ``reference`` reproduces InverseBench's numbers (Devito's
``examples.seismic`` acoustic solver as it uses it): every absorbing cell at 1 km/s whatever the
model (it builds its model from ones and writes only the physical cells), Devito's damping
profile and sponge term, the time range Devito picks for its operators (the wavelet's sample at
t = 0 is never injected, the last sample never recorded), and the 1/2-scaled loss. ``corrected``
extends the edge velocities into the absorbing frame (a wave leaving the model meets no
artificial 1 km/s contrast), uses a sponge tuned to the velocities of the problem, injects the
whole wavelet and records every sample.

``velocity_bounds`` [lo, hi] (km/s) makes the map A(clamp(v, lo, hi)): samplers' intermediate
estimates can leave the physical range (a velocity <= 0, or one past the time step's stability
limit, which would blow the simulation up), and the clamp keeps every call valid; the gradient is
zero where the clamp acts. Without bounds such models raise a ValueError (the reference raises
on the NaNs they produce).

Parallelism: every (model, shots) task runs on a Dask cluster -- a ``LocalCluster`` of
``n_workers`` single-threaded processes by default, an existing cluster when ``scheduler_address``
is set (its workers must be able to import this package), or in this process when
``n_workers = 0``. Workers build and compile the Devito operators once and reuse them for every
call. The cluster starts on first use and is released by ``close()``, when the operator is
garbage-collected, and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
import weakref

import numpy as np
import torch

from inverse_problems.base import BaseOperator, Observation, rows_per_item
from inverse_problems.fwi_devito import Survey, forward_task, gradient_task


@contextlib.contextmanager
def _main_module_hidden():
    """Start worker processes without re-running the ``__main__`` script in them.

    Dask's nannies start workers with multiprocessing's spawn, which imports the parent's main
    script in every child (``main.py``: torch, hydra, the whole harness -- about 0.4 GB and
    seconds per worker) although the wave-equation tasks need numpy and Devito only. Hiding the
    script's path while the cluster starts makes spawn skip it.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if k in main.__dict__}
    if "__spec__" in saved:
        main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


_EXECUTOR = None


def _devito_thread():
    """The one thread that runs Devito kernels in this process (see ``AcousticWave._run``)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devito")
    return _EXECUTOR


def _shutdown(client, cluster) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


#: The stencil order of the reference's solvers, whatever its ``space_order`` argument.
REFERENCE_SPACE_ORDER = 4


class AcousticWave(BaseOperator):
    capabilities = frozenset({"gradient"})

    def __init__(
        self,
        shape=(128, 128),
        spacing=(20.0, 10.0),
        tn: float = 1000.0,
        f0: float = 0.005,
        dt: float = 1.0,
        nbl: int = 80,
        nreceivers: int = 129,
        nshots: int = 16,
        src_depth: float = 10.0,
        rec_depth: float = 10.0,
        fs: bool = True,
        space_order: int = 4,
        scheduler_address: str | None = None,
        n_workers: int | None = None,
        shots_per_task: int = 1,
        velocity_bounds=None,
        sigma_noise: float = 0.0,
        unnorm_shift: float = 3.0,
        unnorm_scale: float = 1.0,
        device="cpu",
        compat: str = "corrected",
        bcs: str = "damp",
        gc_threshold: int | None = None,
    ):
        """``bcs`` and ``gc_threshold`` are the reference's keys, accepted so its command lines
        run: the only boundary condition is an absorbing sponge (``damp``), and garbage collection
        needs no threshold here (workers keep one built solver, no per-call objects)."""
        if bcs != "damp":
            raise ValueError(f"bcs={bcs!r}: only the absorbing sponge 'damp' is implemented")
        super().__init__(sigma_noise, unnorm_shift, unnorm_scale, device, compat=compat)
        if self.compat == "reference" and int(space_order) != REFERENCE_SPACE_ORDER:
            # the reference passes space_order to its Model (halo and free-surface rows) only; its
            # per-shot solvers are built with a fixed order 4
            warnings.warn(
                f"compat=reference: space_order={space_order} is replaced by the reference's "
                f"stencil order {REFERENCE_SPACE_ORDER}",
                stacklevel=2,
            )
            space_order = REFERENCE_SPACE_ORDER
        nx, nz = (int(n) for n in shape)
        dx, dz = (float(h) for h in spacing)
        width = (nx - 1) * dx
        sources = tuple((float(x), float(src_depth)) for x in np.linspace(dx, width, int(nshots)))
        receivers = tuple(
            (float(x), float(rec_depth)) for x in np.linspace(0.0, width, int(nreceivers))
        )
        self.survey = Survey(
            shape=(nx, nz),
            spacing=(dx, dz),
            nbl=int(nbl),
            tn=float(tn),
            dt=float(dt),
            f0=float(f0),
            sources=sources,
            receivers=receivers,
            space_order=int(space_order),
            free_surface=bool(fs),
            compat=self.compat,
        )
        # leapfrog + 2k-th order centred differences: v dt sqrt(sum 1/h^2) <= 2 / sqrt(sum|c|)
        self.max_velocity = _stable_velocity(self.survey)
        self.scheduler_address = scheduler_address
        self.n_workers = n_workers
        self.shots_per_task = max(1, int(shots_per_task))
        self.velocity_bounds = None
        if velocity_bounds is not None:
            lo, hi = (float(b) for b in velocity_bounds)
            if not 0 < lo < hi <= self.max_velocity:
                raise ValueError(
                    f"velocity_bounds {velocity_bounds} must satisfy 0 < lo < hi <= "
                    f"{self.max_velocity:.2f} km/s (the stability limit of this grid and dt)"
                )
            self.velocity_bounds = (lo, hi)
        self._client = None
        self._finalizer = None

    # -- cluster ---------------------------------------------------------------------------------
    @property
    def client(self):
        """The Dask client (``None`` when running in this process), started on first use."""
        if self._client is None and self.n_workers != 0:
            from dask.distributed import Client, LocalCluster

            cluster = None
            if self.scheduler_address:
                client = Client(self.scheduler_address)
            else:
                workers = self.n_workers or min(self.survey.nshots, os.cpu_count() or 1)
                with _main_module_hidden():
                    cluster = LocalCluster(
                        n_workers=int(workers),
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                        env={"OMP_NUM_THREADS": "1", "DEVITO_LOGGING": "ERROR"},
                    )
                client = Client(cluster)
            self._client = client
            self._finalizer = weakref.finalize(self, _shutdown, client, cluster)
        return self._client

    def close(self) -> None:
        """Shut the cluster down (a local one) or disconnect (an external one)."""
        if self._finalizer is not None:
            self._finalizer()
        self._client = self._finalizer = None

    def _run(self, fn, jobs):
        """``fn(survey, *job)`` for every job, on the cluster or here; results in order.

        Here means a dedicated thread: Devito's kernels switch the calling thread's CPU to
        flush-to-zero / denormals-are-zero and never switch it back, which would silently change
        every later float computation of the caller's thread (numpy, torch)."""
        client = self.client
        if client is None:
            survey = self.survey
            return list(_devito_thread().map(lambda job: fn(survey, *job), jobs))
        futures = [client.submit(fn, self.survey, *job, pure=False) for job in jobs]
        return client.gather(futures)

    def _shot_groups(self):
        shots = list(range(self.survey.nshots))
        k = self.shots_per_task
        return [tuple(shots[i : i + k]) for i in range(0, len(shots), k)]

    # -- physics ---------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, inside: bool = False):
        """Physical models (R, nx, nz) in km/s from normalized x (R, 1, nz, nx), clamped to
        ``velocity_bounds`` when set, validated; with ``inside`` also the mask of the cells the
        clamp left alone (the derivative of the clamp)."""
        nx, nz = self.survey.shape
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, nz, nx):
            raise ValueError(f"x has shape {tuple(x.shape)}, expected (R, 1, {nz}, {nx})")
        v = self.unnormalize(x.detach()).to("cpu", torch.float64)[:, 0].transpose(1, 2).numpy()
        mask = None
        if self.velocity_bounds is not None:
            lo, hi = self.velocity_bounds
            mask = (v >= lo) & (v <= hi)
            v = np.clip(v, lo, hi)
        bad = ~np.isfinite(v).all(axis=(1, 2)) | (v.min(axis=(1, 2)) <= 0)
        if bad.any():
            raise ValueError(
                f"rows {np.flatnonzero(bad).tolist()} have non-finite or non-positive velocities"
            )
        vmax = float(v.max())
        if vmax > self.max_velocity:
            raise ValueError(
                f"velocity {vmax:.2f} km/s exceeds the stability limit {self.max_velocity:.2f} "
                f"km/s of dt = {self.survey.dt} ms on this grid; reduce dt or set "
                "velocity_bounds"
            )
        v = np.ascontiguousarray(v, dtype=np.float32)
        return (v, mask) if inside else v

    def forward(self, x: torch.Tensor, **physics) -> torch.Tensor:
        """Traces (R, nshots, nt, nreceivers), float32."""
        vp = self.velocity(x)
        groups = self._shot_groups()
        jobs = [(vp[r], g) for r in range(vp.shape[0]) for g in groups]
        parts = self._run(forward_task, jobs)
        out = np.concatenate(parts).reshape(vp.shape[0], self.survey.nshots, *parts[0].shape[1:])
        return torch.from_numpy(out).to(self.device)

    @property
    def loss_factor(self) -> float:
        """``loss`` per squared misfit ||A(x) - y||^2: 1 (corrected, the harness's convention),
        or 1/2 (reference: its FWI loss and gradient are of 1/2 ||A(x) - y||^2, while every other
        problem's are of ||A(x) - y||^2; its algorithms see the halved values)."""
        return 0.5 if self.compat == "reference" else 1.0

    def loss(self, x: torch.Tensor, observation: Observation) -> torch.Tensor:
        """``loss_factor`` ||A(x) - y||^2 per row (``loss_m``, EnKG's, stays unscaled in both
        modes, as in the reference)."""
        return self.loss_factor * super().loss(x, observation)

    def gradient(self, x: torch.Tensor, observation: Observation, return_loss: bool = False):
        """d loss / d x per row by the adjoint-state method; loss = ``loss_factor``
        ||A(x) - y||^2 per row."""
        vp, inside = self.velocity(x, inside=True)
        rows = vp.shape[0]
        n = rows_per_item(x, observation.batch)
        observed = observation.y.detach().to("cpu", torch.float32).numpy()
        groups = self._shot_groups()
        jobs = [(vp[r], g, observed[r // n][list(g)]) for r in range(rows) for g in groups]
        parts = self._run(gradient_task, jobs)
        misfit = np.zeros(rows)
        grad_v = np.zeros((rows, *self.survey.shape))
        for j, (f, g) in enumerate(parts):
            misfit[j // len(groups)] += f
            grad_v[j // len(groups)] += g
        if inside is not None:  # the clamp's derivative
            grad_v *= inside
        # misfit = 1/2 ||A(x) - y||^2, loss = 2 loss_factor misfit; dv/dx = unnorm_scale;
        # (R, nx, nz) -> (R, 1, nz, nx)
        scale = 2.0 * self.loss_factor
        grad = torch.from_numpy(scale * self.unnorm_scale * grad_v).transpose(1, 2).unsqueeze(1)
        grad = grad.to(device=x.device, dtype=x.dtype).contiguous()
        loss = torch.from_numpy(scale * misfit).to(x.device)
        return (grad, loss) if return_loss else grad


def _stable_velocity(survey: Survey) -> float:
    """Largest velocity for which leapfrog with ``space_order`` centred differences is stable:
    v dt sqrt(sum_i 1/h_i^2) <= 2 / sqrt(sum |c_k|), c_k the second-derivative weights."""
    from math import sqrt

    half = survey.space_order // 2
    # weights of the centred 2*half-order second derivative: c_k = 2 (-1)^(k+1) (half!)^2 /
    # (k^2 (half-k)! (half+k)!), c_0 = -2 sum_k c_k
    from math import factorial

    ck = [
        2
        * (-1) ** (k + 1)
        * factorial(half) ** 2
        / (k * k * factorial(half - k) * factorial(half + k))
        for k in range(1, half + 1)
    ]
    total = abs(2 * sum(ck)) + 2 * sum(abs(c) for c in ck)
    inv_h = sqrt(sum(1.0 / h**2 for h in survey.spacing))
    return 2.0 / sqrt(total) / (survey.dt * inv_h)
