"""Registries that drive the shared property tests: every operator at a tiny size, and every
algorithm config on the Gaussian-mixture toy.

* ``OPERATORS``: name -> factory returning an ``OperatorCase`` (the operator, a collated batch of
  2-3 items with ``target`` and the item physics, and how to probe it). tests/test_operators.py
  runs the shared operator properties (rows use their items' physics, Taylor test, adjoint, SVD
  pieces, pseudo-inverse, noise seeding, float64 input, no state between calls) over it, each
  where the operator declares the capability.
* ``ALGORITHMS``: algorithm config name -> Hydra overrides that make it tiny.
  tests/test_algorithms_shared.py runs the shared algorithm checks (independent of batching, no
  state between calls, compute counted) and tests/test_algorithms_end_to_end.py runs each
  through main.py.

Adding an operator or an algorithm to its registry is all it takes to have it tested. The
set-up helpers the per-problem files share (coil maps, masks, the tiny FWI survey...) live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


@dataclass
class OperatorCase:
    """An operator and a batch of items at a tiny size.

    ``data``: collated items (``target`` (B, C, H, W) normalized, plus the physics keys).
    ``perturb``: size of the random perturbation of the targets that makes probe rows (probe
    rows stay physical for nonlinear solvers). ``direction``: makes a random field like x for
    the perturbation and the Taylor-test direction (random normal by default; FWI smooths it).
    ``taylor_h``: the two steps of the Taylor test. ``additive_noise``: measurements are
    forward + N(0, noise_std^2) per entry (black-hole closures are not). ``batch_rtol``: rows
    of a batch vs each item alone. ``dtype``: of the probe rows."""

    op: object
    data: dict
    perturb: float = 1.0
    direction: Callable | None = None
    taylor_h: tuple[float, float] = (1e-2, 5e-3)
    additive_noise: bool = True
    batch_rtol: float = 1e-6
    dtype: torch.dtype = torch.float64

    @property
    def batch(self) -> int:
        return self.data["target"].shape[0]


# -- shared set-up helpers ------------------------------------------------------------------------
def smooth_maps(B, coils, n, seed=0, normalize=True):
    """Smooth random complex coil maps (B, Nc, n, n); sum_c |S_c|^2 = 1 when ``normalize``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(B, coils, 4, 4, 2, dtype=F64, generator=g)
    up = torch.nn.functional.interpolate(
        low.permute(0, 1, 4, 2, 3).reshape(B, coils * 2, 4, 4), size=(n, n), mode="bicubic"
    )
    maps = torch.view_as_complex(up.reshape(B, coils, 2, n, n).permute(0, 1, 3, 4, 2).contiguous())
    if normalize:
        maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    return maps


def line_masks(B, n, seed=2):
    """(B, 1, n) random line masks, acceleration 4, one per item."""
    from inverse_problems.multi_coil_mri import line_mask

    g = torch.Generator().manual_seed(seed)
    return torch.stack([line_mask(n, 4, "random", g) for _ in range(B)])[:, None, :]


#: A tiny FWI survey (2 shots; 10 m cells; 15 Hz) that solves in milliseconds.
FWI_TINY = dict(
    shape=(40, 30),
    spacing=(10.0, 10.0),
    tn=400.0,
    f0=0.015,
    dt=1.0,
    nbl=20,
    nreceivers=21,
    nshots=2,
    src_depth=290.0,
    rec_depth=10.0,
    n_workers=0,
)


def layered(batch: int, nz: int, nx: int) -> torch.Tensor:
    """Normalized models (v - 3 km/s): two layers with a dipping interface, one per row."""
    z = torch.arange(nz).view(nz, 1).float()
    xg = torch.arange(nx).view(1, nx).float()
    rows = []
    for b in range(batch):
        interface = nz / 2 + (b + 1) * 0.15 * (xg - nx / 2)
        rows.append(torch.where(z < interface, -1.0 + 0.1 * b, 0.3 + 0.2 * b))
    return torch.stack(rows).unsqueeze(1)


def smooth_like(x: torch.Tensor, gen: torch.Generator, width: float = 3.0) -> torch.Tensor:
    """A smooth random field like x, max |.| = 1 per row."""
    from algo.data_fit import gaussian_smooth

    d = gaussian_smooth(torch.randn(x.shape, generator=gen, dtype=torch.float32), width)
    return (d / d.flatten(1).abs().amax(1).reshape(-1, *[1] * (d.dim() - 1))).to(x.dtype)


def ns_field(n, size=16, seed=0):
    """Smooth initial vorticities (n, 1, size, size), normalized (w / 10)."""
    from utils.distributions import matern_field

    f = matern_field(size, alpha=2.5, tau=7.0, variance=0.09)
    return f.sample(n, torch.Generator().manual_seed(seed)).reshape(n, 1, size, size).float()


def bh_ring(n=64, fov=160.0, radius=20.0, width=4.0, angle=1.0):
    """Normalized [-1, 1] crescent: an asymmetric Gaussian ring of ``radius`` uas (1, n, n)."""
    c = (torch.arange(n, dtype=F64) - n / 2 + 0.5) * fov / n
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = (xx**2 + yy**2).sqrt()
    img = torch.exp(-(((r - radius) / width) ** 2) / 2) * (
        1 + 0.6 * torch.cos(torch.atan2(yy, xx) - angle)
    )
    return (2 * img / img.max() - 1)[None]


def gmm_problem(dim_y=4, items=3, dim=8, op=None, **data_kw):
    """The Gaussian-mixture toy: (gmm, op, data, obs) for ``items`` items of
    ``LinearGMMProblems`` (default seed; ``data_kw`` e.g. sigma_noise, id_list), observed with
    ``op`` (``SVDLinear`` by default) on the observation streams of the items' ids."""
    from inverse_problems.linear import SVDLinear
    from training.exact import LinearGMMProblems
    from utils.distributions import grid_gmm
    from utils.results import collate
    from utils.rng import BatchRNG

    gmm = grid_gmm(dim)
    op = op or SVDLinear()
    if "id_list" not in data_kw:
        data_kw["num_items"] = items
    data = LinearGMMProblems(gmm, dim_y=dim_y, **data_kw)
    n = len(data.id_list)
    obs = op(collate([data[i] for i in range(n)]), BatchRNG.for_items(0, data.id_list, 0))
    return gmm, op, data, obs


def grf_problem(items=2, size=16, num_obs=None, sigma_noise=0.1, op=None):
    """The Gaussian-random-field toy: (field, op, data, obs), ``num_obs`` observed pixels per
    item (size^2 / 64 by default) through ``PixelSubsample`` (or ``op``)."""
    from inverse_problems.linear import PixelSubsample
    from training.exact import PixelGRFProblems
    from utils.distributions import matern_field
    from utils.results import collate
    from utils.rng import BatchRNG

    field = matern_field(size=size)
    op = op or PixelSubsample(shape=(1, size, size), sigma_noise=sigma_noise)
    num_obs = size * size // 64 if num_obs is None else num_obs
    data = PixelGRFProblems(field, num_obs=num_obs, num_items=items)
    obs = op(collate([data[i] for i in range(items)]), BatchRNG.for_items(0, data.id_list, 0))
    return field, op, data, obs


# -- operators ------------------------------------------------------------------------------------
def _svd_linear():
    from inverse_problems.linear import SVDLinear
    from training.exact import LinearGMMProblems
    from utils.distributions import grid_gmm
    from utils.results import collate

    ds = LinearGMMProblems(grid_gmm(6), dim_y=3, num_items=3, seed=1)
    return OperatorCase(SVDLinear(), collate([ds[i] for i in range(3)]))


def _pixel_subsample():
    from inverse_problems.linear import PixelSubsample
    from training.exact import PixelGRFProblems
    from utils.distributions import matern_field
    from utils.results import collate

    ds = PixelGRFProblems(matern_field(size=8), num_obs=7, num_items=3, seed=2)
    op = PixelSubsample(shape=(1, 8, 8), sigma_noise=0.1)
    return OperatorCase(op, collate([ds[i] for i in range(3)]))


def _inverse_scatter(tmp_dir: Path):
    from inverse_problems.inverse_scatter import InverseScatter

    op = InverseScatter(Nx=8, Ny=8, numTrans=4, numRec=6, sigma_noise=0.01, cache_dir=str(tmp_dir))
    x = torch.rand(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return OperatorCase(op, {"target": x}, batch_rtol=1e-10)


def _multi_coil_mri():
    from inverse_problems.multi_coil_mri import MultiCoilMRI

    op = MultiCoilMRI(total_lines=16, sigma_noise=0.05)
    x = torch.randn(3, 2, 16, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    data = {"target": x, "maps": smooth_maps(3, 4, 16), "mask": line_masks(3, 16)}
    return OperatorCase(op, data, batch_rtol=1e-10)


def _blackhole():
    from inverse_problems.blackhole import BlackHoleImaging

    op = BlackHoleImaging(
        array_file=str(ROOT / "data/eht/EHT2017_m87.txt"), imsize=16, flux_scale=0.004
    )
    x = torch.cat([bh_ring(16), bh_ring(16, radius=25.0, angle=2.0)])[:, None].float()
    # closures are sums of logs/angles of visibilities: small perturbations keep them smooth
    return OperatorCase(
        op, {"target": x}, perturb=0.05, additive_noise=False, taylor_h=(1e-3, 5e-4)
    )


def _navier_stokes():
    from inverse_problems.navier_stokes import ForwardNavierStokes2d

    op = ForwardNavierStokes2d(
        resolution=16,
        downsample_factor=2,
        forward_time=0.1,
        delta_t=0.01,
        adaptive=False,
        differentiable=True,
        dtype="float64",
        sigma_noise=0.1,
    )
    return OperatorCase(op, {"target": ns_field(2, seed=1)}, perturb=0.1, batch_rtol=1e-5)


def _acoustic_wave():
    from inverse_problems.acoustic import AcousticWave

    op = AcousticWave(**FWI_TINY)
    nx, nz = op.survey.shape
    return OperatorCase(
        op,
        {"target": layered(2, nz, nx)},
        perturb=0.2,  # probe rows: the layered models plus a smooth 0.2 km/s perturbation
        direction=smooth_like,
        taylor_h=(0.02, 0.01),
        batch_rtol=0.0,
    )


#: name -> factory(tmp_dir) -> OperatorCase (tmp_dir: for caches such as SVD factors)
OPERATORS: dict[str, Callable] = {
    "svd-linear": lambda tmp: _svd_linear(),
    "pixel-subsample": lambda tmp: _pixel_subsample(),
    "inverse-scatter": _inverse_scatter,
    "multi-coil-mri": lambda tmp: _multi_coil_mri(),
    "blackhole": lambda tmp: _blackhole(),
    "navier-stokes": lambda tmp: _navier_stokes(),
    "acoustic-wave": lambda tmp: _acoustic_wave(),
}

#: optional dependencies per operator (the case is skipped without them)
REQUIRES = {"blackhole": "ehtim", "acoustic-wave": "devito"}


# -- algorithms -----------------------------------------------------------------------------------
M = "algorithm.method"

#: A few steps of each algorithm config (configs/algorithm/<name>.yaml; keys differ between
#: methods).
ALGORITHMS: dict[str, list[str]] = {
    "cs_mri": [f"{M}.max_iter=3"],
    "csgm_mri": [f"{M}.sigmas_config.num_levels=10", f"{M}.start_iter=6", f"{M}.n_steps_each=2"],
    "daps": [
        f"{M}.annealing_scheduler_config.num_steps=3",
        f"{M}.diffusion_scheduler_config.num_steps=2",
        f"{M}.lgvd_config.num_steps=2",
    ],
    "ddnm": [f"{M}.scheduler_config.num_steps=4"],
    "ddrm": [f"{M}.scheduler_config.num_steps=4"],
    "ddsmc": [
        f"{M}.annealing_scheduler_config.num_steps=4",
        f"{M}.rho_scheduler_config.num_steps=4",
        f"{M}.smc_config.num_particles=4",
    ],
    "diffpir": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "dpg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_mc_samples=4",
        f"{M}.batch_size=4",
    ],
    "dps": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "ehtim_rml": [f"{M}.maxit=3", f"{M}.rounds=1"],
    "dps_gsg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_queries=4",
        f"{M}.batch_size=4",
    ],
    "eki": [f"{M}.num_particles=8", f"{M}.num_updates=2"],
    "eki_kalman": [f"{M}.num_particles=8", f"{M}.num_updates=2"],
    "enkg": [f"{M}.num_particles=8", f"{M}.num_steps=4"],
    "fista_tv": [f"{M}.num_iters=3", f"{M}.tv_iters=2", f"{M}.power_iters=3"],
    "fps": [f"{M}.scheduler_config.num_steps=4", f"{M}.num_particles=4"],
    "lgd": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "mcgdiff": [f"{M}.scheduler_config.num_steps=4", f"{M}.num_particles=4"],
    "pigdm": [f"{M}.scheduler_config.num_steps=4"],
    "pnpdm": [
        f"{M}.annealing_scheduler_config.num_steps=2",
        f"{M}.diffusion_scheduler_config.num_steps=3",
        f"{M}.lgvd_config.num_steps=2",
    ],
    "reddiff": [f"{M}.num_steps=4"],
    "score_mri": [f"{M}.scheduler_config.num_steps=4"],
    "scg": [
        f"{M}.diffusion_scheduler_config.num_steps=4",
        f"{M}.num_candidates=2",
        f"{M}.batch_size=2",
    ],
    "uncond": [f"{M}.diffusion_scheduler_config.num_steps=4"],
    "adam": [f"{M}.num_steps=5", f"{M}.init=constant", f"{M}.bounds=null", f"{M}.lr=0.1"],
    "lbfgs": [f"{M}.num_steps=2", f"{M}.init=constant", f"{M}.bounds=null"],
}

#: Algorithms bound to one problem family (they run in that problem's tests): on gmm they must
#: refuse with this message.
NOT_ON_GMM = {"cs_mri": "multi-coil MRI", "ehtim_rml": "black-hole imaging operator"}

#: the gmm toy at a tiny size: every algorithm above (but NOT_ON_GMM) runs on it
GMM_TINY = [
    "problem=gmm",
    "pretrain=gmm",
    "problem.data.num_items=2",
    "num_samples=4",
    "batch_size=2",
    "problem.evaluator.num_reference=200",
]
