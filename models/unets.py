"""EDM's DDPM++/NCSN++ and ADM U-Nets (Karras et al. 2022), loadable from released checkpoints.

``SongUNet`` is DDPM++/NCSN++ (Song et al. 2021) and ``DhariwalUNet`` is ADM (Dhariwal & Nichol
2021), both in the form EDM trains them. Submodule names (``enc['64x64_block0']`` and so on) and
shapes are fixed by the released InverseBench priors, which load with ``strict=True``; the
decoder's skip bookkeeping is ours. Tuple arguments also accept lists (Hydra passes ListConfig).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.modules import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
)

__all__ = ["DhariwalUNet", "SongUNet"]


def _ints(values: Iterable) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _noise_vector(noise_labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Noise labels as one value per sample; a single value is shared by the batch."""
    noise_labels = torch.as_tensor(noise_labels, device=x.device).reshape(-1)
    if not noise_labels.is_floating_point():
        noise_labels = noise_labels.float()
    if noise_labels.numel() == 1:
        noise_labels = noise_labels.expand(x.shape[0])
    return noise_labels


def _drop_labels(net: nn.Module, labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Class labels, zeroed per sample with probability label_dropout while training (CFG)."""
    if labels is None:
        raise ValueError(f"{type(net).__name__} was built with label_dim>0: pass class_labels")
    if not labels.is_floating_point():  # integer one-hot rows are fine too
        labels = labels.float()
    if net.training and net.label_dropout:
        keep = torch.rand([x.shape[0], 1], device=x.device) >= net.label_dropout
        labels = labels * keep.to(labels.dtype)
    return labels


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ backbone (Song et al. 2021) as configured by EDM (Karras et al. 2022)."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Iterable[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Iterable[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Iterable[float] = (1, 1),
    ):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier': {embedding_type}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard|skip|residual: {encoder_type}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard|skip: {decoder_type}")
        super().__init__()
        channel_mult, attn_res = _ints(channel_mult), set(_ints(attn_resolutions))
        fir = [float(t) for t in resample_filter]
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        # DDPM++ gains: Xavier everywhere, near-zero output layers, sqrt(0.2) on attention qkv.
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        blk = dict(
            emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
            eps=1e-6, resample_filter=fir, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )  # fmt: skip

        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch, **init) if label_dim else None
        self.map_augment = (
            Linear(augment_dim, noise_ch, bias=False, **init) if augment_dim else None
        )
        self.map_layer0 = Linear(noise_ch, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)

        self.enc = nn.ModuleDict()
        skip_widths = []  # width of each encoder output the decoder will concatenate
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == 0:
                self.enc[f"{tag}_conv"] = Conv2d(cout, model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f"{tag}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":  # progressive input image pyramid
                    self.enc[f"{tag}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=fir
                    )
                    self.enc[f"{tag}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":  # NCSN++'s residual input pyramid
                    self.enc[f"{tag}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=fir,
                        fused_resample=True, **init,
                    )  # fmt: skip
                    caux = cout
            skip_widths.append(cout)
            for i in range(num_blocks):
                width = model_channels * mult
                attn = r in attn_res
                self.enc[f"{tag}_block{i}"] = UNetBlock(cout, width, attention=attn, **blk)
                cout = width
                skip_widths.append(cout)

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == len(channel_mult) - 1:  # bottleneck: attention block, then plain block
                self.dec[f"{tag}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{tag}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{tag}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                width = model_channels * mult
                attn = i == num_blocks and r in attn_res  # only the last block of a level
                cin = cout + skip_widths.pop()
                self.dec[f"{tag}_block{i}"] = UNetBlock(cin, width, attention=attn, **blk)
                cout = width
            if decoder_type == "skip" or level == 0:  # output head(s)
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{tag}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=fir
                    )
                self.dec[f"{tag}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{tag}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """Denoiser output (B, out_channels, H, W) for x (B, in_channels, H, W)."""
        emb = self.map_noise(_noise_vector(noise_labels, x))
        # DDPM++ orders the embedding [sin | cos]; swapping halves keeps released weights valid.
        emb = torch.cat(emb.chunk(2, dim=1)[::-1], dim=1)
        if self.map_label is not None:
            labels = _drop_labels(self, class_labels, x)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips, aux = [], x
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = head = None  # `out` accumulates the (upsampled) output of every head
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                out = block(out)
            elif name.endswith("_aux_norm"):
                head = block(x)
            elif name.endswith("_aux_conv"):
                head = block(F.silu(head))
                out = head if out is None else head + out
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM backbone (Dhariwal & Nichol 2021) as configured by EDM (Karras et al. 2022)."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Iterable[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Iterable[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        channel_mult, attn_res = _ints(channel_mult), set(_ints(attn_resolutions))
        self.label_dropout = label_dropout
        emb_ch = model_channels * channel_mult_emb
        # ADM gains: PyTorch's default uniform init (Kaiming-uniform times sqrt(1/3)) and zeroed
        # output layers, so a fresh network outputs exactly zero.
        gain = math.sqrt(1 / 3)
        init = dict(init_mode="kaiming_uniform", init_weight=gain, init_bias=gain)
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        blk = dict(
            emb_channels=emb_ch, channels_per_head=64, dropout=dropout, init=init,
            init_zero=init_zero,
        )  # fmt: skip

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (
            Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        )
        self.map_layer0 = Linear(model_channels, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        self.map_label = None
        if label_dim:  # unit-variance class embedding for one-hot labels
            self.map_label = Linear(
                label_dim, emb_ch, bias=False, init_mode="kaiming_normal",
                init_weight=math.sqrt(label_dim),
            )  # fmt: skip

        self.enc = nn.ModuleDict()
        skip_widths = []
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == 0:
                self.enc[f"{tag}_conv"] = Conv2d(cout, model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f"{tag}_down"] = UNetBlock(cout, cout, down=True, **blk)
            skip_widths.append(cout)
            for i in range(num_blocks):
                width = model_channels * mult
                attn = r in attn_res
                self.enc[f"{tag}_block{i}"] = UNetBlock(cout, width, attention=attn, **blk)
                cout = width
                skip_widths.append(cout)

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            tag = f"{r}x{r}"
            if level == len(channel_mult) - 1:
                self.dec[f"{tag}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{tag}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{tag}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):  # unlike DDPM++, every block of a level attends
                width = model_channels * mult
                cin = cout + skip_widths.pop()
                attn = r in attn_res
                self.dec[f"{tag}_block{i}"] = UNetBlock(cin, width, attention=attn, **blk)
                cout = width
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        """Denoiser output (B, out_channels, H, W) for x (B, in_channels, H, W)."""
        emb = self.map_noise(_noise_vector(noise_labels, x))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:  # ADM adds the class after the MLP, unlike DDPM++
            emb = emb + self.map_label(_drop_labels(self, class_labels, x))
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:  # each decoder level's blocks consume the encoder outputs LIFO
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
