"""Image-domain ring fit of black-hole images, in the manner of REx, the ring extractor of the
EHT's M87* feature extraction (Chael et al.; EHT Collaboration, ApJL 875 L4, 2019, Sect. 9 and
Appendix; ApJL 875 L6, 2019, Sect. 3).

For a candidate centre, the image is sampled along ``num_angles`` rays (bicubic interpolation,
radial steps of ``step_uas``) from ``min_radius_uas`` out to ``max_radius_uas``; the peak of
each radial profile gives r_pk(theta). The centre is the one that makes the ring most circular:
it minimizes the spread std(r_pk) / mean(r_pk) plus twice the fraction of rays that peak on the
search's edges (no ring crossed there); a coarse grid over the central ``search_uas``, then a
Nelder-Mead refinement. At that centre:

* diameter d = 2 mean(r_pk);
* width w = mean over rays of the full width at half maximum of the profile about its peak,
  after subtracting the profile's floor (its minimum inside ``max_radius_uas``), as REx;
* orientation eta = arg( sum_theta I(theta) e^{i theta} ) and brightness asymmetry
  A = |sum_theta I(theta) e^{i theta}| / sum_theta I(theta), with I(theta) the brightness
  integrated over d/2 - w/2 ... d/2 + w/2 along each ray; theta is the position angle east of
  north (images are stored north up, east to the left: ehtim's convention).

Everything is in micro-arcseconds and degrees; the fit is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RingFit:
    diameter_uas: float
    width_uas: float
    orientation_deg: float
    asymmetry: float
    centre_uas: tuple[float, float]  # (east, north) offsets from the image centre

    def as_dict(self) -> dict:
        return asdict(self)


def _profiles(img, pixel_uas, centre, angles, radii, order):
    """(angles, radii) brightness along rays from ``centre`` (east, north uas)."""
    from scipy.ndimage import map_coordinates

    n = img.shape[0]
    east = centre[0] + radii[None, :] * np.sin(angles)[:, None]
    north = centre[1] + radii[None, :] * np.cos(angles)[:, None]
    # pixel (row, col): row 0 is north, column 0 is east; centres at (n - 1) / 2
    col = (n - 1) / 2 - east / pixel_uas
    row = (n - 1) / 2 - north / pixel_uas
    return map_coordinates(img, [row, col], order=order, mode="constant", cval=0.0)


def _spread(img, pixel_uas, centre, angles, radii, order=1):
    prof = _profiles(img, pixel_uas, centre, angles, radii, order)
    k = np.argmax(prof, axis=1)
    r_pk = radii[k]
    # rays that peak on the search's inner or outer edge found no ring: a centre on the ring
    # itself peaks at the inner edge on every ray (a 'perfectly circular' ring of that radius)
    edge = float(np.mean((k == 0) | (k == len(radii) - 1)))
    return float(np.std(r_pk) / max(np.mean(r_pk), 1e-9)) + 2.0 * edge


def fit_ring(
    image,
    pixel_uas: float,
    num_angles: int = 180,
    max_radius_uas: float = 50.0,
    min_radius_uas: float = 5.0,
    step_uas: float = 0.25,
    search_uas: float = 20.0,
    search_step_uas: float = 4.0,
) -> RingFit:
    """REx ring parameters of one image (H, W) (rows north to south, east to the left) with
    pixels of ``pixel_uas``. Raises for an empty or non-finite image."""
    from scipy.optimize import minimize

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"fit_ring needs one square image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("fit_ring: the image holds NaN or infinite values")
    img = np.clip(img, 0, None)
    if img.max() <= 0:
        raise ValueError("fit_ring: the image is empty (no positive brightness)")
    angles = np.linspace(0, 2 * math.pi, num_angles, endpoint=False)
    # rays start at ``min_radius_uas``: a centre on the ring itself would otherwise find its
    # peak at radius 0 on every ray (a perfectly 'circular' ring of size 0)
    radii = np.arange(min_radius_uas, max_radius_uas + step_uas / 2, step_uas)
    coarse_angles = angles[:: max(1, num_angles // 60)]
    coarse = np.arange(-search_uas, search_uas + 1e-9, search_step_uas)
    best, start = math.inf, (0.0, 0.0)
    for e in coarse:
        for nn in coarse:
            s = _spread(img, pixel_uas, (e, nn), coarse_angles, radii)
            if s < best:
                best, start = s, (e, nn)
    res = minimize(
        lambda c: _spread(img, pixel_uas, tuple(c), angles, radii, order=3),
        np.asarray(start),
        method="Nelder-Mead",
        options={"xatol": 0.05, "fatol": 1e-5, "maxiter": 200},
    )
    centre = tuple(float(c) for c in res.x)
    prof = _profiles(img, pixel_uas, centre, angles, radii, order=3)
    k = np.argmax(prof, axis=1)
    r_pk = radii[k]
    diameter = 2 * float(np.mean(r_pk))
    widths = []
    for a in range(num_angles):
        p = prof[a] - prof[a].min()  # the floor: REx's background subtraction
        half = p[k[a]] / 2
        lo = k[a]
        while lo > 0 and p[lo] > half:
            lo -= 1
        hi = k[a]
        while hi < len(p) - 1 and p[hi] > half:
            hi += 1
        widths.append((hi - lo) * step_uas)
    width = float(np.mean(widths))
    band = (radii >= diameter / 2 - width / 2) & (radii <= diameter / 2 + width / 2)
    brightness = prof[:, band].sum(1)
    moment = np.sum(brightness * np.exp(1j * angles))
    total = float(brightness.sum())
    return RingFit(
        diameter_uas=diameter,
        width_uas=width,
        orientation_deg=float(np.degrees(np.angle(moment)) % 360),
        asymmetry=float(abs(moment) / total) if total > 0 else float("nan"),
        centre_uas=centre,
    )


def circular_spread_deg(angles_deg) -> float:
    """Circular standard deviation (degrees) of angles: sqrt(-2 ln R), R the mean resultant."""
    z = np.exp(1j * np.radians(np.asarray(angles_deg, dtype=np.float64)))
    r = min(abs(z.mean()), 1.0)
    return float(np.degrees(math.sqrt(max(-2 * math.log(max(r, 1e-300)), 0.0)))) + 0.0  # no -0


def circular_mean_deg(angles_deg) -> float:
    z = np.exp(1j * np.radians(np.asarray(angles_deg, dtype=np.float64)))
    return float(np.degrees(np.angle(z.mean())) % 360)
