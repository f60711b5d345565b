"""An SD1.5-size U-Net in plain torch, for timing ELLA's step against the model it conditions.

The GPU machine has no diffusers, so this stand-in rebuilds the layout of diffusers'
`UNet2DConditionModel` with the SD1.5 configuration (block widths 320/640/1280/1280, two ResNets
per down block and three per up block, one transformer block per attention with 8 heads, GEGLU
feed-forward, 768-wide cross-attention context, 1x1-conv projections around each transformer).
At full width it has exactly SD1.5's 859,520,964 parameters (tests/test_gpu_check.py checks), and
its attention runs through `scaled_dot_product_attention` as diffusers' default processor does, so
a forward costs what SD1.5's does. The weights are random: only its time is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SD15_CHANNELS = (320, 640, 1280, 1280)
SD15_PARAMETERS = 859_520_964  # diffusers' UNet2DConditionModel with SD1.5's config
HEADS = 8
CONTEXT_DIM = 768
GROUPS = 32


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context):
        b, n, d = x.shape

        def heads(t):
            return t.reshape(b, t.shape[1], HEADS, d // HEADS).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text context, GEGLU feed-forward (inner width 4x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, CONTEXT_DIM)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_proj = nn.Linear(dim, 8 * dim)
        self.ff_out = nn.Linear(4 * dim, dim)

    def forward(self, x, context):
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        hidden, gate = self.ff_proj(self.norm3(x)).chunk(2, dim=-1)
        return x + self.ff_out(hidden * F.gelu(gate))


class SpatialTransformer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, dim, eps=1e-6)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.block = TransformerBlock(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)
        y = self.block(y, context).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class SD15UNet(nn.Module):
    """x [B, 4, H, W], t [B], context [B, 77 or 64, 768] -> [B, 4, H, W]."""

    def __init__(self, channels: tuple[int, ...] = SD15_CHANNELS):
        super().__init__()
        c0 = channels[0]
        temb = 4 * c0
        self.time_channels = c0
        self.time_1 = nn.Linear(c0, temb)
        self.time_2 = nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(4, c0, 3, padding=1)
        last = len(channels) - 1
        # down: two (ResNet, transformer) pairs per level (no transformer on the last), a stride-2 conv between levels
        self.down = nn.ModuleList()
        skips = [c0]
        cin = c0
        for level, cout in enumerate(channels):
            for _ in range(2):
                self.down.append(
                    nn.ModuleList([ResBlock(cin, cout, temb)] + ([SpatialTransformer(cout)] if level < last else []))
                )
                skips.append(cout)
                cin = cout
            if level < last:
                self.down.append(nn.ModuleList([nn.Conv2d(cout, cout, 3, stride=2, padding=1)]))
                skips.append(cout)
        self.mid = nn.ModuleList([ResBlock(cin, cin, temb), SpatialTransformer(cin), ResBlock(cin, cin, temb)])
        # up: three ResNets per level, each taking one skip, transformers except on the first level, nearest x2 + conv
        self.up = nn.ModuleList()
        for level, cout in enumerate(reversed(channels)):
            for _ in range(3):
                self.up.append(
                    nn.ModuleList(
                        [ResBlock(cin + skips.pop(), cout, temb)] + ([SpatialTransformer(cout)] if level > 0 else [])
                    )
                )
                cin = cout
            if level < last:
                self.up.append(nn.ModuleList([nn.Conv2d(cout, cout, 3, padding=1)]))
        self.norm_out = nn.GroupNorm(GROUPS, c0, eps=1e-5)
        self.conv_out = nn.Conv2d(c0, 4, 3, padding=1)

    def time_embedding(self, t):
        half = self.time_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        sinusoid = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.time_1.weight.dtype)
        return self.time_2(F.silu(self.time_1(sinusoid)))

    @staticmethod
    def _run(layers, h, emb, context):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, x, t, context):
        emb = self.time_embedding(t)
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = self._run(layers, torch.cat([h, skips.pop()], dim=1), emb, context)
            else:  # the upsampler
                h = layers[0](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
