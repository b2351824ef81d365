"""MAGVIT-v2 image tokenizer (Show-o / MMaDA / Dynin-Omni ``modeling_magvitv2.py``).

A VQGAN-style convolutional encoder, a 13-bit lookup-free quantiser (LFQ,
8,192 codes) and a decoder. Module and tensor names equal the upstream
checkpoint (``pytorch_model.safetensors`` in ``snu-aidas/magvitv2``); the
constructor defaults are the real network, because the real ``config.json``
carries no architecture fields.

Shapes: pixels ``[B, 3, H, W]`` in ``[-1, 1]`` with ``H`` and ``W`` divisible by
16 -> codes ``[B, (H/16)*(W/16)]`` (row-major grid) -> pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Name of the weights file in the upstream repository (not ``model.safetensors``).
MAGVIT_WEIGHTS_NAME = "pytorch_model.safetensors"

#: Total down-sampling factor of the encoder (four stride-2 stages).
DOWNSAMPLE_FACTOR = 16


def _normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 projections and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww)
        v = self.v(h).reshape(b, c, hh * ww)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (+ ``attn``) and an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class VQGANEncoder(nn.Module):
    """Convolutional encoder: ``[B, 3, H, W]`` -> ``[B, z, H/16, W/16]``."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: Sequence[int],
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_ch_mult = (1, *ch_mult)
        curr_res = resolution
        block_in = ch
        self.down = nn.ModuleList()
        for i_level, mult in enumerate(ch_mult):
            level = _Level()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * mult
            for _ in range(num_res_blocks[i_level]):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(level)
        self.mid = _mid(block_in)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            h = _run_level(level, h)
            if i_level != len(self.down) - 1:
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        h = self.conv_out(_swish(self.norm_out(h)))
        return self.quant_conv(h)


class VQGANDecoder(nn.Module):
    """Convolutional decoder: ``[B, z, h, w]`` -> ``[B, 3, 16h, 16w]``."""

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: Sequence[int],
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (num_levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        levels: list[_Level] = []
        for i_level in reversed(range(num_levels)):
            level = _Level()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks[i_level]):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != 0:
                level.upsample = Upsample(block_in)
                curr_res *= 2
            levels.insert(0, level)
        # ``up[i]`` is resolution level i; the forward pass walks it top-down.
        self.up = nn.ModuleList(levels)
        self.norm_out = _normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = _run_mid(self.mid, h)
        for i_level in reversed(range(len(self.up))):
            level = self.up[i_level]
            h = _run_level(level, h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """Lookup-free quantiser: sign per channel, code = MSB-first bit pattern.

    ``code = sum_c 2^(C-1-c) * [z_c > 0]`` -- channel 0 is the most significant
    bit and ``z = 0`` counts as a 0 bit. ``embedding[i]`` holds the bits of ``i``
    mapped ``{0, 1} -> {-1, +1}``.
    """

    def __init__(self, codebook_dim: int = 13) -> None:
        super().__init__()
        self.codebook_dim = codebook_dim
        self.codebook_size = 2**codebook_dim
        shifts = torch.arange(codebook_dim - 1, -1, -1, dtype=torch.long)
        bits = (torch.arange(self.codebook_size).unsqueeze(1) >> shifts) & 1
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", 2**shifts)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Map ``z`` ``[B, C, h, w]`` to ``{-1, +1}`` per channel (``z <= 0`` -> -1)."""
        signs = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        # Upstream writes the straight-through form ``z + (sign - z)``; keep its
        # floating-point result so extreme values round exactly as there.
        return z + (signs - z)

    def codes_from_quantized(self, z_q: torch.Tensor) -> torch.Tensor:
        """Return codes ``[B, h, w]`` from quantised latents ``[B, C, h, w]``."""
        weights = self.power_vals.reshape(1, -1, 1, 1).to(z_q.dtype)
        return (weights * (z_q > 0).to(z_q.dtype)).sum(1).long()

    def latents_from_codes(
        self, codes: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Return latents ``[B, C, h, w]`` for codes ``[B, h*w]`` laid out row-major."""
        b = codes.shape[0]
        h, w = grid
        z_q = self.embedding[codes.reshape(-1)]
        return z_q.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


class MagvitV2(nn.Module):
    """The MAGVIT-v2 tokenizer network (``encoder``, ``decoder``, ``quantize``).

    Every argument defaults to the real ``snu-aidas/magvitv2`` network; tiny test
    fixtures override sizes (``ch`` must stay a multiple of 32 for GroupNorm).
    """

    def __init__(
        self,
        ch: int = 128,
        enc_ch_mult: Sequence[int] = (1, 2, 2, 4, 4),
        enc_num_res_blocks: Sequence[int] = (4, 3, 4, 3, 4),
        dec_ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        dec_num_res_blocks: Sequence[int] = (4, 4, 3, 4, 3),
        z_channels: int = 13,
        attn_resolutions: Sequence[int] = (5,),
        resolution: int = 256,
    ) -> None:
        super().__init__()
        for name, mult, blocks in (
            ("enc", enc_ch_mult, enc_num_res_blocks),
            ("dec", dec_ch_mult, dec_num_res_blocks),
        ):
            if len(mult) != len(blocks):
                raise ValueError(
                    f"{name}_ch_mult and {name}_num_res_blocks differ in length"
                )
            if len(mult) != 5:
                raise ValueError(
                    f"{name}_ch_mult must have 5 levels (16x down-sampling)"
                )
        self.encoder = VQGANEncoder(
            ch,
            enc_ch_mult,
            enc_num_res_blocks,
            attn_resolutions,
            resolution,
            z_channels,
        )
        self.decoder = VQGANDecoder(
            ch,
            dec_ch_mult,
            dec_num_res_blocks,
            attn_resolutions,
            resolution,
            z_channels,
        )
        self.quantize = LFQuantizer(z_channels)

    #: Constructor arguments that a ``config.json`` may override.
    CONFIG_KEYS: tuple[str, ...] = (
        "ch",
        "enc_ch_mult",
        "enc_num_res_blocks",
        "dec_ch_mult",
        "dec_num_res_blocks",
        "z_channels",
        "attn_resolutions",
        "resolution",
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MagvitV2:
        """Build from a ``config.json`` mapping; keys not in :attr:`CONFIG_KEYS` are
        ignored (the real file holds only bookkeeping fields)."""
        kwargs = {k: config[k] for k in cls.CONFIG_KEYS if k in config}
        return cls(**kwargs)

    @property
    def codebook_size(self) -> int:
        """Number of codes (8,192 for the real network)."""
        return self.quantize.codebook_size

    @staticmethod
    def grid_size(height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` of a ``height x width`` input (multiples of 16)."""
        if (
            height % DOWNSAMPLE_FACTOR
            or width % DOWNSAMPLE_FACTOR
            or height <= 0
            or width <= 0
        ):
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of "
                f"{DOWNSAMPLE_FACTOR}"
            )
        return height // DOWNSAMPLE_FACTOR, width // DOWNSAMPLE_FACTOR

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode pixels ``[B, 3, H, W]`` in [-1, 1] to row-major codes ``[B, h*w]``."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"expected pixels of shape [B, 3, H, W], got {tuple(pixels.shape)}"
            )
        self.grid_size(pixels.shape[2], pixels.shape[3])
        param = next(self.parameters())
        z = self.encoder(pixels.to(device=param.device, dtype=param.dtype))
        codes = self.quantize.codes_from_quantized(self.quantize.quantize(z))
        return codes.reshape(pixels.shape[0], -1)

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Decode codes ``[B, N]`` to unclamped pixels ``[B, 3, 16h, 16w]`` (~[-1, 1]).

        ``grid`` is the ``(h, w)`` token grid; without it the grid must be square
        (``h = w = sqrt(N)``), as upstream assumes.
        """
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() != 2:
            raise ValueError(
                f"expected codes of shape [B, N], got {tuple(codes.shape)}"
            )
        n = codes.shape[1]
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"{n} codes do not form a square grid; pass grid=(h, w)"
                )
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {grid} does not hold {n} codes")
        if codes.numel() and (
            int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size
        ):
            raise ValueError(f"image codes must lie in [0, {self.codebook_size})")
        device = self.quantize.embedding.device
        z_q = self.quantize.latents_from_codes(
            codes.to(device=device, dtype=torch.long), grid
        )
        return self.decoder(z_q)
