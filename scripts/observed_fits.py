"""FITS images of black-hole results on measured data: per item, every sample, their mean and
their standard deviation, in Jy per pixel with the header ehtim writes (the figures module's
``write_fits``: pixel size, frequency, source position and MJD of the item's own uvfits file).

    python scripts/observed_fits.py exps/inference/blackhole-observed/daps/default

writes ``<run>/fits/item_<id>_sample_<k>.fits``, ``item_<id>_mean.fits`` and
``item_<id>_std.fits`` (std only with several samples) and prints the paths. The pixel size comes
from the run's ``config.yaml`` (problem.model.fov_uas / imsize), the brightness scale (Jy per
image unit) from each item's observation (its zero-baseline flux over ``observed_image_flux``),
or the config's ``flux_scale`` for simulated items. ``ehtim.image.load_fits`` and astropy read
the files back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inverse_problems.eht import M87, RADPERUAS
from inversebench.figures import write_fits


def item_fits(out_dir, item_id: int, result: dict, psize: float, flux_scale: float) -> list[Path]:
    """Write one item's sample, mean and std FITS; ``result`` as saved by main.py (``recon``
    (N, 1, H, W) in image units, ``physics`` with the item's ``flux_scale`` and ``source`` for
    measured data). ``psize`` in radians; ``flux_scale`` (Jy per unit) where the item has none."""
    physics = result.get("physics", {})
    if "flux_scale" in physics:
        flux_scale = float(physics["flux_scale"].reshape(-1)[0])
    head = {"rf": 230e9, "ra": M87["ra"], "dec": M87["dec"], "mjd": 57849}
    if "source" in physics:
        ra, dec, rf, _bw, mjd = (float(v) for v in physics["source"].reshape(-1)[:5])
        head = {"rf": rf, "ra": ra, "dec": dec, "mjd": mjd}
    recon = torch.as_tensor(result["recon"]).to(torch.float64)
    if recon.dim() != 4 or recon.shape[1] != 1:
        raise ValueError(f"item {item_id}: recon of shape {tuple(recon.shape)} is not (N, 1, H, W)")
    jy = recon[:, 0].numpy() * flux_scale
    out = Path(out_dir)
    paths = [
        write_fits(out / f"item_{item_id}_sample_{k}.fits", img, psize, **head)
        for k, img in enumerate(jy)
    ]
    paths.append(write_fits(out / f"item_{item_id}_mean.fits", jy.mean(0), psize, **head))
    if len(jy) > 1:
        paths.append(write_fits(out / f"item_{item_id}_std.fits", jy.std(0), psize, **head))
    return paths


def run_fits(run_dir) -> list[Path]:
    """Every ``result_<id>.pt`` of a run folder to FITS under ``<run_dir>/fits``."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: give a run folder written by main.py")
    model = OmegaConf.load(config).problem.model
    if "blackhole" not in str(model.get("_target_", "")):
        raise ValueError(f"{run_dir} is not a black-hole run ({model.get('_target_')})")
    psize = float(model.fov_uas) * RADPERUAS / int(model.imsize)
    results = sorted(run_dir.glob("result_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not results:
        raise FileNotFoundError(f"no result_<id>.pt in {run_dir}")
    paths = []
    for path in results:
        res = torch.load(path, weights_only=True)
        item = int(path.stem.split("_")[1])
        paths += item_fits(run_dir / "fits", item, res, psize, float(model.flux_scale))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a black-hole run folder written by main.py")
    args = parser.parse_args(argv)
    for p in run_fits(args.run_dir):
        print(p)


if __name__ == "__main__":
    main()
