"""Synthetic OpenFWI CurveFault-like velocity maps for full-waveform inversion.

InverseBench's FWI data are OpenFWI CurveFault maps: 70 x 70 float32 velocities in m/s between
1.5 and 4.5 km/s, a stack of smoothly curved layers whose velocity tends to grow with depth, cut
by one or two straight faults across which the stack is displaced. ``curve_fault`` draws the
parameters of such a map from a numpy ``Generator`` and ``render`` evaluates it at pixel centres
of the unit square (row = depth z, column = distance x, as the reference stores them):

* 3-6 layers; interface depths spread over z in [0.08, 0.95] with a minimum gap; each interface
  is z_k(x) = d_k + a shared fold (1-2 sine modes of 0.3-1.5 periods, amplitude 0.02-0.12) plus
  its own smaller bend (amplitude 0-0.03), so layers are curved but rarely cross (where they do,
  a layer pinches out);
* layer velocities: uniform draws in [1500, 4500] m/s sorted by depth, then jittered by
  N(0, 250 m/s) and clipped, so velocity increases with depth on the whole but not always;
* 1-2 faults, each a straight line through a point of the central region at a dip of 35-80
  degrees (either direction); on the hanging-wall side the layer stack slides along the fault
  by a throw of 0.05-0.2 (normal or reverse). Faults act in sequence, so a second fault also
  offsets the first.

The map is piecewise constant with sharp edges, like OpenFWI's. Map idx of ``generate`` uses
seed (seed, idx), so any subset can be regenerated alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from utils.rng import DATA, derive_seed

V_MIN, V_MAX = 1500.0, 4500.0  # m/s, OpenFWI's range


@dataclass(frozen=True)
class Fault:
    x0: float  # a point on the fault line (unit square)
    z0: float
    dip: float  # radians from horizontal; the sign gives the dip direction
    throw: float  # slip along the fault, in units of the map size; sign: normal / reverse


@dataclass(frozen=True)
class CurveFaultModel:
    depths: np.ndarray  # (L-1,) mean interface depths, increasing
    fold: tuple  # ((amplitude, wavenumber, phase), ...) shared by all interfaces
    bends: np.ndarray  # (L-1, 3): each interface's own (amplitude, wavenumber, phase)
    velocities: np.ndarray  # (L,) m/s, top layer first
    faults: tuple[Fault, ...] = field(default=())


def _interfaces(model: CurveFaultModel, x: np.ndarray) -> np.ndarray:
    """Depth of every interface at horizontal positions x: (L-1, *x.shape)."""
    shared = sum(a * np.sin(2 * np.pi * k * x + p) for a, k, p in model.fold)
    a, k, p = (model.bends[:, i].reshape(-1, *[1] * x.ndim) for i in range(3))
    return model.depths.reshape(-1, *[1] * x.ndim) + shared + a * np.sin(2 * np.pi * k * x + p)


def _unfault(fault: Fault, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a point on the hanging wall came from: shift it back along the fault."""
    dx, dz = np.cos(fault.dip), np.sin(fault.dip)  # unit vector along the fault, downward
    side = (x - fault.x0) * dz - (z - fault.z0) * dx > 0  # one side of the line
    return x - side * fault.throw * dx, z - side * fault.throw * dz


def render(model: CurveFaultModel, n: int = 70) -> np.ndarray:
    """(n, n) float32 velocity map in m/s, rows = depth."""
    c = (np.arange(n) + 0.5) / n
    z, x = np.meshgrid(c, c, indexing="ij")
    for fault in reversed(model.faults):  # the last fault moved rocks already offset by earlier
        x, z = _unfault(fault, x, z)
    layer = (z[None] > _interfaces(model, x)).sum(0)
    return model.velocities[layer].astype(np.float32)


def curve_fault(rng: np.random.Generator) -> CurveFaultModel:
    """Draw the parameters of one map (see the module docstring)."""
    n_layers = int(rng.integers(3, 7))
    # interface depths: sorted uniforms, resampled until no two are closer than 0.06
    for _ in range(100):
        depths = np.sort(rng.uniform(0.08, 0.95, n_layers - 1))
        if n_layers == 2 or np.diff(depths).min() > 0.06:
            break
    fold = tuple(
        (rng.uniform(0.02, 0.12) / (m + 1), rng.uniform(0.3, 1.5) * (m + 1), rng.uniform(0, 6.3))
        for m in range(int(rng.integers(1, 3)))
    )
    bends = np.stack(
        [
            rng.uniform(0.0, 0.03, n_layers - 1),
            rng.uniform(0.5, 2.0, n_layers - 1),
            rng.uniform(0, 2 * np.pi, n_layers - 1),
        ],
        axis=1,
    )
    v = np.sort(rng.uniform(V_MIN, V_MAX, n_layers)) + rng.normal(0, 250.0, n_layers)
    velocities = np.clip(v, V_MIN, V_MAX)
    faults = []
    for _ in range(int(rng.integers(1, 3))):
        dip = np.deg2rad(rng.uniform(35, 80)) * rng.choice([-1.0, 1.0])
        throw = rng.uniform(0.05, 0.2) * rng.choice([-1.0, 1.0])
        faults.append(Fault(rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.7), dip, throw))
    return CurveFaultModel(depths, fold, bends, velocities, tuple(faults))


def without_faults(model: CurveFaultModel) -> CurveFaultModel:
    """The same layer stack before faulting."""
    return replace(model, faults=())


def generate(num: int, n: int = 70, seed: int = 0) -> np.ndarray:
    """(num, 1, n, n) float32 velocity maps in m/s; map i uses seed (seed, i)."""
    out = np.empty((num, 1, n, n), dtype=np.float32)
    for i in range(num):
        rng = np.random.default_rng(derive_seed(seed, i, DATA))
        out[i, 0] = render(curve_fault(rng), n)
    return out
