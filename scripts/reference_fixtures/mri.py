"""Multi-coil MRI parity fixtures from the reference's own classes (run by
scripts/make_reference_fixtures.py inside a reference checkout; imports nothing of this project).

Writes
* ``mri_masks.npz``: the reference's line masks (``MultiCoilMRI.get_mask`` through its
  constructor) for 64 (multi-coil-mri-small) and 320 lines, R = 4 and 8, random and equispaced,
  several ``mask_seed``s, as (total_lines,) bool arrays named ``mask_<lines>_<R>_<pattern>_<seed>``;
* ``mri_operator.npz``: on a 24 x 32 grid with 4 coils and seeded maps, k-space and images, for
  the vertical (32 lines) and horizontal (24 lines) orientations: the reference's observation
  (``op(data)``: masked k-space), forward, loss and autograd gradient;
* ``mri_eval.npz``: the reference's ``eval.MRI`` (psnr, ssim, data misfit) for 1 and 4 samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # after the reference: only _common

from _common import parse_args, save

from eval import MRI
from inverse_problems.multi_coil_mri import MultiCoilMRI

SEEDS = (0, 1, 7, 123)
H, W, COILS = 24, 32, 4


def masks() -> dict:
    out = {}
    for lines in (64, 320):
        for R in (4, 8):
            for pattern in ("random", "equispaced"):
                for seed in SEEDS:
                    op = MultiCoilMRI(
                        total_lines=lines,
                        acceleration_ratio=R,
                        pattern=pattern,
                        mask_seed=seed,
                        device="cpu",
                    )
                    out[f"mask_{lines}_{R}_{pattern}_{seed}"] = op.mask.reshape(-1).numpy()
    return out


def operator_case(orientation: str, g: torch.Generator) -> dict:
    lines = W if orientation == "vertical" else H
    op = MultiCoilMRI(
        total_lines=lines,
        acceleration_ratio=4,
        pattern="random",
        orientation=orientation,
        mask_seed=3,
        device="cpu",
    )
    maps = torch.randn(1, COILS, H, W, dtype=torch.complex128, generator=g)
    kspace = torch.randn(1, COILS, H, W, dtype=torch.complex128, generator=g)
    x = torch.randn(2, 2, H, W, dtype=torch.float64, generator=g)
    y = op({"maps": maps, "kspace": kspace})  # sets op.maps; masked raw k-space, real pairs
    forward = op.forward(x)
    loss = op.loss(x, y)
    grad, loss_sum = op.gradient(x, y, return_loss=True)
    p = orientation[0]
    return {
        f"{p}_mask": op.mask.numpy(),
        f"{p}_maps": maps.numpy(),
        f"{p}_kspace": kspace.numpy(),
        f"{p}_x": x.numpy(),
        f"{p}_y": y.numpy(),
        f"{p}_forward": forward.numpy(),
        f"{p}_loss": loss.detach().numpy(),
        f"{p}_grad": grad.numpy(),
        f"{p}_loss_sum": loss_sum.detach().numpy(),
    }


def evaluator_case(g: torch.Generator) -> dict:
    op = MultiCoilMRI(total_lines=W, acceleration_ratio=4, mask_seed=5, device="cpu")
    maps = torch.randn(1, COILS, H, W, dtype=torch.complex128, generator=g)
    maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
    target = torch.randn(1, 2, H, W, dtype=torch.float64, generator=g).float()
    kspace = torch.fft.fftshift(
        torch.fft.fft2(
            torch.fft.ifftshift(
                maps * torch.complex(target[:, 0], target[:, 1]).to(torch.complex128)[:, None]
            ),
            norm="ortho",
        )
    )
    y = op({"maps": maps, "kspace": kspace})
    out = {"e_maps": maps.numpy(), "e_target": target.numpy(), "e_y": y.numpy()}
    for n in (1, 4):
        pred = (target + 0.3 * torch.randn(n, 2, H, W, generator=g)).float()
        values = MRI(forward_op=op)(pred, target, y)
        out[f"e_pred_{n}"] = pred.numpy()
        for key in ("psnr", "ssim", "data misfit"):
            out[f"e_{key.replace(' ', '_')}_{n}"] = np.float64(float(values[key]))
    return out


def main():
    args = parse_args(__doc__)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    meta = {"seeds": list(SEEDS), "lines": [64, 320], "R": [4, 8]}
    save(args.out / "mri_masks.npz", args.reference, meta, **masks())
    g = torch.Generator().manual_seed(20260)
    arrays = {**operator_case("vertical", g), **operator_case("horizontal", g)}
    meta = {"H": H, "W": W, "coils": COILS, "R": 4, "mask_seed": 3, "pattern": "random"}
    save(args.out / "mri_operator.npz", args.reference, meta, **arrays)
    meta = {"H": H, "W": W, "coils": COILS, "R": 4, "mask_seed": 5, "samples": [1, 4]}
    save(args.out / "mri_eval.npz", args.reference, meta, **evaluator_case(g))


if __name__ == "__main__":
    main()
