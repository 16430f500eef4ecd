"""Layers of the EDM U-Nets (Karras et al. 2022), named so released state dicts load strictly.

Every parameter and buffer name and shape here is fixed by the released InverseBench checkpoints;
the code around them is ours. Initialisation follows the EDM recipe (a mode and a gain per layer)
so that a freshly built network starts where EDM's training started, e.g. with zero output layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
]


def init_tensor(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor for one of EDM's four init modes (Karras et al. 2022, Appendix F.3)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (2 * torch.rand(*shape) - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (2 * torch.rand(*shape) - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _new_param(shape, gain: float, mode: str, fan_in: int, fan_out: int) -> nn.Parameter:
    # A zero gain still draws (and discards) random numbers in EDM; we skip the draw, since no
    # released weight depends on the RNG stream of initialisation.
    if gain == 0:
        return nn.Parameter(torch.zeros(*shape))
    return nn.Parameter(init_tensor(shape, mode, fan_in, fan_out) * gain)


class Linear(nn.Module):
    """Fully connected layer with EDM's initialisation (Karras et al. 2022)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = _new_param([out_features, in_features], init_weight, **fans)
        self.bias = _new_param([out_features], init_bias, **fans) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Conv2d(nn.Module):
    """Square convolution with optional FIR up/downsampling by 2 (Karras et al. 2022).

    ``kernel=0`` gives a weightless layer that only resamples. ``fused_resample`` convolves at
    the high resolution (before downsampling, after upsampling), as NCSN++'s residual encoder does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ):
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        area = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels * area, fan_out=out_channels * area)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = _new_param(shape, init_weight, **fans) if kernel else None
        self.bias = _new_param([out_channels], init_bias, **fans) if kernel and bias else None
        taps = torch.as_tensor([float(t) for t in resample_filter], dtype=torch.float32)
        fir = torch.outer(taps, taps) / taps.sum() ** 2
        # Persistent buffer: checkpoints carry it, so it must exist exactly when resampling.
        self.register_buffer("resample_filter", fir[None, None] if up or down else None)

    def _resample(self, x: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
        fir = self.resample_filter.to(x.dtype)
        channels = x.shape[1]
        if up:  # zero-stuffing transpose conv; gain 4 keeps the mean since 3 of 4 samples are 0
            fir = (fir * 4).expand(channels, 1, -1, -1)
            return F.conv_transpose2d(x, fir, stride=2, padding=padding, groups=channels)
        fir = fir.expand(channels, 1, -1, -1)
        return F.conv2d(x, fir, stride=2, padding=padding, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if self.resample_filter is None else (self.resample_filter.shape[-1] - 1) // 2
        if w is not None and self.fused_resample and self.up:
            x = self._resample(x, up=True, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif w is not None and self.fused_resample and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, up=False, padding=0)
        else:
            if self.up or self.down:
                x = self._resample(x, up=self.up, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        # x is a fresh convolution output here, so adding in place is safe.
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype).view(1, -1, 1, 1))
        return x


class GroupNorm(nn.Module):
    """Group normalisation with at least 4 channels per group, as in EDM (Karras et al. 2022)."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, w, b, self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal noise-level embedding [cos | sin] (DDPM++ of Song et al. 2021; ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint  # DDPM++ lets the last frequency reach 1/max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device)
        exponent = exponent / (half - 1 if self.endpoint else half)
        freqs = (1.0 / self.max_positions) ** exponent
        phase = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([phase.cos(), phase.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier-feature noise embedding [cos | sin] (NCSN++ of Song et al. 2021)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        # A buffer, not a parameter: the frequencies are fixed but travel with checkpoints.
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([phase.cos(), phase.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block with noise conditioning and optional self-attention.

    The union of the DDPM++/NCSN++ (Song et al. 2021) and ADM (Dhariwal & Nichol 2021) blocks as
    unified by EDM (Karras et al. 2022): ``adaptive_scale`` picks ADM's scale-and-shift over
    DDPM++'s additive embedding; ``skip_scale`` rescales every residual sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if num_heads is None:  # rounds down to 0 for narrow layers, which then skip attention
            num_heads = out_channels // channels_per_head
        self.num_heads = num_heads if attention else 0
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        affine_out = out_channels * (2 if adaptive_scale else 1)
        self.affine = Linear(emb_channels, affine_out, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        # Zero-gain last layers make a fresh block start as its skip path (EDM, ADM).
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # ADM resamples the shortcut without a projection when the width is unchanged.
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            qkv_init = init if init_attn is None else init_attn
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **qkv_init)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def _scaled_(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.skip_scale == 1 else x.mul_(self.skip_scale)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        # Released weights order the 3C qkv channels as (head, channel-in-head, q|k|v).
        qkv = self.qkv(self.norm2(x)).reshape(b, heads, c // heads, 3, h * w)
        # One copy into (q|k|v, batch, head, token, channel): contiguous 4-D inputs let CPU and
        # GPU use fused attention kernels instead of the strided math fallback.
        q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c/heads)) v
        return out.transpose(-1, -2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In-place updates below only touch fresh outputs of convolutions and sums, which no
        # backward pass needs, so they save activation memory without breaking autograd.
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).to(h.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h.add_(params)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = self._scaled_(h.add_(x if self.skip is None else self.skip(x)))
        if self.num_heads:
            h = self._scaled_(self.proj(self._attend(h)).add_(h))
        return h
