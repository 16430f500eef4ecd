"""The ADM U-Net of guided-diffusion, as used by InverseBench's FFHQ-256 prior (converted from DPS).

Reference: P. Dhariwal and A. Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
(arXiv:2105.05233), Sec. 3 "Architecture improvements": BigGAN-style residual up/downsampling,
multi-head attention at several resolutions, and adaptive group normalisation (``AdaGN``, here
``use_scale_shift_norm``).

This is an independent implementation whose ``state_dict`` has exactly the key names and shapes of
guided-diffusion's ``UNetModel`` (module attribute names and ``nn.Sequential`` positions are kept
for that reason), so released checkpoints such as ``ffhq256.pt`` load with ``strict=True``.
Differences from the original interface: ``label_dim`` replaces ``num_classes``; ``learn_sigma``
doubles the last conv but ``forward`` returns only the epsilon half; timesteps may be continuous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(dims: int, c_in: int, c_out: int, kernel: int, stride=1, zero: bool = False) -> nn.Module:
    conv = _CONV[dims](c_in, c_out, kernel, stride=stride, padding=kernel // 2)
    if zero:  # residual branches and the output start as identity / zero (as in ADM)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def _spatial_factor(dims: int):
    # For 3-D signals only the two inner axes are resampled; the first is time/depth.
    return (1, 2, 2) if dims == 3 else 2


class GroupNorm32(nn.GroupNorm):
    """32-group norm computed in at least float32, so an fp16 torso stays stable."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(torch.promote_types(x.dtype, self.weight.dtype), torch.float32)
        w, b = self.weight.to(dt), self.bias.to(dt)
        return F.group_norm(x.to(dt), self.num_groups, w, b, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` of (possibly fractional) timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _MaybeCheckpointed(nn.Module):
    """Runs ``_forward`` under activation checkpointing when asked and a graph is being built."""

    use_checkpoint = False

    def forward(self, *args):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class ResBlock(_MaybeCheckpointed):
    """Residual block conditioned on the embedding; optionally resamples (BigGAN up/down)."""

    def __init__(
        self,
        ch,
        emb_ch,
        dropout,
        out_ch=None,
        dims=2,
        scale_shift=False,
        resample=None,
        use_checkpoint=False,
    ):
        super().__init__()
        out_ch = out_ch or ch
        self.dims, self.resample, self.scale_shift = dims, resample, scale_shift
        self.use_checkpoint = use_checkpoint
        # Indices inside these Sequentials are part of the checkpoint's key names.
        self.in_layers = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _conv(dims, ch, out_ch, 3))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            _conv(dims, out_ch, out_ch, 3, zero=True),
        )
        self.skip_connection = nn.Identity() if out_ch == ch else _conv(dims, ch, out_ch, 1)

    def _resample(self, x):
        factor = _spatial_factor(self.dims)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=factor, mode="nearest")
        return _AVG_POOL[self.dims](x, factor, factor)

    def _forward(self, x, emb):
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample:  # resample between activation and conv, the skip path alike
            h, x = self._resample(h), self._resample(x)
        h = conv(h)
        e = self.emb_layers(emb).to(h.dtype)
        e = e.reshape(*e.shape, *([1] * (h.ndim - 2)))
        out_norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:  # AdaGN: GroupNorm(h) * (1 + scale) + shift
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        return self.skip_connection(x) + rest(h)


class AttentionBlock(_MaybeCheckpointed):
    """Multi-head self-attention over all spatial positions (1x1 Conv1d projections)."""

    def __init__(self, ch, heads, legacy_order=True, use_checkpoint=False):
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} heads")
        self.heads, self.legacy_order, self.use_checkpoint = heads, legacy_order, use_checkpoint
        self.norm = GroupNorm32(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = _conv(1, ch, ch, 1, zero=True)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        d, t = c // self.heads, x.shape[-1]
        if self.legacy_order:  # channel layout (head, {q,k,v}, d): split heads first
            q, k, v = qkv.reshape(b, self.heads, 3 * d, t).split(d, dim=2)
        else:  # layout ({q,k,v}, head, d)
            q, k, v = qkv.reshape(b, 3, self.heads, d, t).unbind(1)
        # SDPA's default 1/sqrt(d) equals ADM's d^-1/4 applied to both q and k.
        a = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (b, heads, t, d)
        h = self.proj_out(a.mT.reshape(b, c, t))
        return (x + h).reshape(b, c, *spatial)


class Upsample(nn.Module):
    def __init__(self, ch, use_conv, dims=2):
        super().__init__()
        self.dims = dims
        if use_conv:
            self.conv = _conv(dims, ch, ch, 3)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=_spatial_factor(self.dims), mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    def __init__(self, ch, use_conv, dims=2):
        super().__init__()
        factor = _spatial_factor(dims)
        self.op = _conv(dims, ch, ch, 3, stride=factor) if use_conv else _POOL[dims](factor, factor)

    def forward(self, x):
        return self.op(x)


class EmbedSequential(nn.Sequential):
    """Sequential whose residual blocks also receive the time(+class) embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """ADM U-Net predicting epsilon; ``attention_resolutions`` are downsample rates (ds values).

    ``use_checkpoint`` wraps every residual and attention block in ``torch.utils.checkpoint``
    (non-reentrant) while autograd is recording; ``use_fp16`` stores the torso's convolutions in
    float16 (as guided-diffusion's ``convert_to_fp16``); embeddings, norms and the head stay fp32.
    """

    def __init__(
        self,
        img_resolution,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        learn_sigma=True,
        dropout=0,
        channel_mult=(1, 2, 4, 8),
        conv_resample=True,
        dims=2,
        label_dim=0,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
    ):
        super().__init__()
        if isinstance(attention_resolutions, int):
            attention_resolutions = [attention_resolutions]
        attn_ds = {int(r) for r in attention_resolutions}  # also accepts Hydra ListConfig
        channel_mult = tuple(channel_mult)  # entries may be fractional, e.g. 0.5 at 512 px
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.img_resolution = img_resolution
        self.in_channels, self.out_channels = in_channels, out_channels
        self.model_channels, self.label_dim = model_channels, label_dim
        self.learn_sigma = learn_sigma
        emb_ch = 4 * model_channels

        def res(c_in, c_out, resample=None):
            return ResBlock(
                c_in, emb_ch, dropout, c_out, dims, use_scale_shift_norm, resample, use_checkpoint
            )

        def attn(ch, heads):
            if num_head_channels != -1:  # a fixed width per head overrides the head count
                heads = ch // num_head_channels
            return AttentionBlock(ch, heads, not use_new_attention_order, use_checkpoint)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )
        if label_dim:
            self.label_emb = nn.Embedding(label_dim, emb_ch)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(_conv(dims, in_channels, ch, 3))])
        skip_ch, ds = [ch], 1  # channels of every encoder activation the decoder concatenates
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_ch.append(ch)
            if level < len(channel_mult) - 1:
                down = (
                    res(ch, ch, "down") if resblock_updown else Downsample(ch, conv_resample, dims)
                )
                self.input_blocks.append(EmbedSequential(down))
                skip_ch.append(ch)
                ds *= 2

        # The middle block always has attention, whatever attention_resolutions says.
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_ch.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level > 0 and i == num_res_blocks:
                    layers.append(
                        res(ch, ch, "up") if resblock_updown else Upsample(ch, conv_resample, dims)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        head_ch = 2 * out_channels if learn_sigma else out_channels  # [epsilon, variance logits]
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _conv(dims, ch, head_ch, 3, zero=True))
        if use_fp16:
            self.convert_to_fp16()

    def _torso_convs(self):
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            yield from (m for m in part.modules() if isinstance(m, tuple(_CONV.values())))

    def convert_to_fp16(self):
        for conv in self._torso_convs():
            conv.half()

    def convert_to_fp32(self):
        for conv in self._torso_convs():
            conv.float()

    @property
    def torso_dtype(self) -> torch.dtype:
        # Read off the weights rather than a flag, so a later .float() / .half() stays consistent.
        return self.input_blocks[0][0].weight.dtype

    def _label_indices(self, labels, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        # Preconditioners hand over one-hot float rows (B, label_dim); an all-zero row (their
        # stand-in for "no label") therefore maps to class 0.
        if labels.is_floating_point() or labels.ndim == 2:
            labels = labels.reshape(-1, self.label_dim).argmax(dim=1)
        labels = labels.reshape(-1).long()
        return labels.expand(batch) if labels.numel() == 1 else labels

    def forward(self, x, timesteps, class_labels=None):
        """Epsilon ``(B, out_channels, ...)`` in ``x``'s dtype; float ``timesteps`` in [0, M)."""
        batch = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        emb = timestep_embedding(t.expand(batch) if t.numel() == 1 else t, self.model_channels)
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))  # e.g. a float64 model
        if self.label_dim:
            if class_labels is None:
                raise ValueError("this UNetModel is class-conditional: pass class_labels")
            emb = emb + self.label_emb(self._label_indices(class_labels, batch).to(x.device))
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional UNetModel (label_dim=0)")

        h, skips = x.to(self.torso_dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h.to(self.out[2].weight.dtype))
        return out[:, : self.out_channels].to(x.dtype)
