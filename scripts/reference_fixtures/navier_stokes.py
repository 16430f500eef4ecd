"""Parity fixture: the reference's Navier–Stokes forward operator (ForwardNavierStokes2d) on seeded
smooth initial vorticities, adaptive and fixed time steps, at 64^2 and the paper's 128^2 (shorter
horizons than T = 1 to stay cheap), plus its noisy observation given a recorded noise draw and its
loss. Runs inside a reference checkout (scripts/make_reference_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(1, str(Path(__file__).resolve().parent))
from _common import parse_args, save


def smooth_fields(n: int, res: int, seed: int) -> np.ndarray:
    """(n, 1, res, res) float32 normalized vorticities (std 0.3): white noise filtered by
    (1 + |k|^2 / 4)^-1.5 (a GRF-like field with eddies down to a few cells)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(res, 1.0 / res)
    kk = k[:, None] ** 2 + k[None, :] ** 2
    out = np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, res, res))) / (1 + kk / 4) ** 1.5).real
    out /= out.std(axis=(1, 2), keepdims=True)
    return (0.3 * out[:, None]).astype(np.float32)


CASES = [  # name, resolution, forward_time, adaptive, delta_t, dtype
    ("adaptive64", 64, 0.5, True, 1e-3, "float32"),
    ("fixed64", 64, 0.5, False, 2e-3, "float32"),
    ("adaptive128", 128, 0.2, True, 1e-3, "float32"),
    # float64: what remains of the float32 differences is rounding, not arithmetic
    ("adaptive64f64", 64, 0.5, True, 1e-3, "float64"),
    ("fixed64f64", 64, 0.5, False, 2e-3, "float64"),
]


def main():
    args = parse_args(__doc__)
    from inverse_problems.navier_stokes import ForwardNavierStokes2d

    torch.set_num_threads(1)
    arrays, meta = {}, {"cases": []}
    for k, (name, res, T, adaptive, dt, dtype) in enumerate(CASES):
        op = ForwardNavierStokes2d(
            resolution=res,
            forward_time=T,
            Re=200.0,
            downsample_factor=2,
            dtype=getattr(torch, dtype),
            delta_t=dt,
            adaptive=adaptive,
            sigma_noise=0.05,
            unnorm_scale=10.0,
            device="cpu",
        )
        x = smooth_fields(1, res, seed=k % 3).astype(dtype)
        xt = torch.from_numpy(x)
        y_clean = op.forward(xt)
        torch.manual_seed(k)
        y_noisy = op({"target": xt})  # forward + sigma_noise * randn_like (global RNG)
        torch.manual_seed(k)
        noise = torch.randn_like(y_clean)
        x2 = torch.from_numpy(smooth_fields(1, res, seed=100 + k % 3).astype(dtype))
        loss = op.loss(x2, y_noisy)
        arrays.update(
            {
                f"{name}_x": x,
                f"{name}_y": y_clean.numpy(),
                f"{name}_noise": noise.numpy(),
                f"{name}_y_noisy": y_noisy.numpy(),
                f"{name}_x2": x2.numpy(),
                f"{name}_loss": loss.numpy(),
            }
        )
        meta["cases"].append(
            dict(
                name=name,
                resolution=res,
                forward_time=T,
                adaptive=adaptive,
                delta_t=dt,
                dtype=dtype,
                sigma_noise=0.05,
                unnorm_scale=10.0,
                Re=200.0,
                downsample_factor=2,
            )
        )
        print(name, tuple(y_clean.shape), float(loss[0]), flush=True)
    # the evaluator (relative l2), for 1 and 4 samples of one item
    from eval import NavierStokes2d

    g = torch.Generator().manual_seed(7)
    target = torch.from_numpy(arrays["adaptive64_y"]).double()  # (1, 1, 32, 32)
    for n in (1, 4):
        pred = target + 0.3 * torch.randn(n, *target.shape[1:], generator=g, dtype=torch.float64)
        arrays[f"eval{n}_pred"] = pred.numpy()
        arrays[f"eval{n}_relative_l2"] = np.array(NavierStokes2d(None)(pred, target)["relative l2"])
    arrays["eval_target"] = target.numpy()
    save(args.out / "navier_stokes.npz", args.reference, meta, **arrays)


if __name__ == "__main__":
    main()
