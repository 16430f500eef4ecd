"""Inverse-scattering parity fixtures from the reference's own classes (run by
scripts/make_reference_fixtures.py inside a reference checkout; imports nothing of this project).

Writes
* ``inverse_scatter_small.npz``: at inv-scatter-small's size (32^2, 20 transmitters, 60
  receivers, sigma 1e-4, shift 1, scale 0.5) for one seeded image (the reference reads only
  f[0, 0] of a batch): its noisy observation and the complex noise drawn for it (torch's global
  RNG, recorded by reseeding), forward, loss, autograd gradient; from its SVD (``svd=True``, cached
  in a temporary folder, not the checkout): all singular values, the mask ``M``, and for seeded
  test vectors the projections onto the leading k right and left singular vectors and the
  truncated pseudo-inverse V_k S_k^-1 U_k^T y (k: singular values above 1e-4 of the largest);
* ``inverse_scatter_paper.npz``: the paper's size (128^2, 20 x 360, ``svd=False``): forward and
  loss of one seeded image;
* ``inverse_scatter_eval.npz``: ``eval.InverseScatter`` (psnr, ssim) for 1 and 4 samples.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # after the reference: only _common

from _common import parse_args, save

from eval import InverseScatter as InverseScatterEval  # the reference's
from inverse_problems.inverse_scatter import InverseScatter  # the reference's

SMALL = dict(Lx=0.18, Ly=0.18, Nx=32, Ny=32, wave=6, numRec=60, numTrans=20, sensorRadius=1.6)
PAPER = dict(SMALL, Nx=128, Ny=128, numRec=360)
UNITS = dict(sigma_noise=1e-4, unnorm_shift=1.0, unnorm_scale=0.5, device="cpu")
RTOL = 1e-4


def image(n: int, g: torch.Generator, batch: int = 1) -> torch.Tensor:
    """Normalized images in about [-1, 1] (blobs on a background, like the phantoms)."""
    x = torch.rand(batch, 1, n, n, dtype=torch.float64, generator=g) * 0.4 - 1.0
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    for _ in range(3):
        cy, cx = (torch.rand(2, generator=g) * n * 0.6 + n * 0.2).tolist()
        r = float(torch.rand(1, generator=g)) * n / 6 + n / 12
        x[:, :, (yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += 1.2
    return x


def small(g: torch.Generator) -> dict:
    op = InverseScatter(**SMALL, svd=True, **UNITS)
    x = image(32, g)
    seed = 321
    torch.manual_seed(seed)
    y = op({"target": x})  # forward + sigma * randn_like(complex)
    torch.manual_seed(seed)
    noise = torch.randn_like(y)  # the same draw again
    forward = op.forward(x)
    assert torch.equal(y, forward + UNITS["sigma_noise"] * noise)
    pred = image(32, g)
    loss = op.loss(pred, y)
    grad, loss_sum = op.gradient(pred, y, return_loss=True)
    S = op.Sigma
    k = int((S > RTOL * S[0]).sum())
    Vk, Uk, Sk = op.V_t[:k], op.U[:, :k], S[:k]
    test_x = torch.randn(3, 32 * 32, dtype=torch.float64, generator=g)
    test_y = torch.randn(3, op.U.shape[0], dtype=torch.float64, generator=g)
    return {
        "x": x.numpy(),
        "y": y.numpy(),
        "noise": noise.numpy(),
        "forward": forward.numpy(),
        "pred": pred.numpy(),
        "loss": loss.detach().numpy(),
        "grad": grad.numpy(),
        "loss_sum": loss_sum.detach().numpy(),
        "S": S.numpy(),
        "M": op.M.numpy(),
        "k": np.int64(k),
        "test_x": test_x.numpy(),
        "test_y": test_y.numpy(),
        "proj_V": ((test_x @ Vk.T) @ Vk).numpy(),  # V_k V_k^T x
        "proj_U": ((test_y @ Uk) @ Uk.T).numpy(),  # U_k U_k^T y
        "pinv_k": (((test_y @ Uk) / Sk) @ Vk).numpy(),  # V_k S_k^-1 U_k^T y, physical units
    }


def paper(g: torch.Generator) -> dict:
    op = InverseScatter(**PAPER, svd=False, **UNITS)
    x = image(128, g).float()
    forward = op.forward(x)
    pred = image(128, g).float()
    return {
        "x": x.numpy(),
        "forward": forward.numpy(),
        "pred": pred.numpy(),
        "loss": op.loss(pred, forward).numpy(),
    }


def evaluator(g: torch.Generator) -> dict:
    ev = InverseScatterEval(forward_op=None)
    target = (image(32, g) * 0.5 + 0.5).clamp(0, 1).float()
    out = {"target": target.numpy()}
    for n in (1, 4):
        pred = (
            target + 0.15 * torch.randn(n, 1, 32, 32, generator=g)
        ).float()  # some out of [0, 1]
        values = ev(pred, target)
        out[f"pred_{n}"] = pred.numpy()
        out[f"psnr_{n}"] = np.float64(values["psnr"])
        out[f"ssim_{n}"] = np.float64(values["ssim"])
    return out


def main():
    args = parse_args(__doc__)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(4242)
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the reference caches its SVD under ./cache, keyed by T and R only
        try:
            arrays = small(g)
        finally:
            os.chdir(home)
    save(
        out / "inverse_scatter_small.npz", args.reference, dict(SMALL, **UNITS, rtol=RTOL), **arrays
    )
    save(out / "inverse_scatter_paper.npz", args.reference, dict(PAPER, **UNITS), **paper(g))
    save(out / "inverse_scatter_eval.npz", args.reference, {"samples": [1, 4]}, **evaluator(g))


if __name__ == "__main__":
    main()
