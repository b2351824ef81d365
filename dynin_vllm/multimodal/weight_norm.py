"""Convolutions with old-style weight normalisation (``weight_g`` / ``weight_v``).

The EMOVA checkpoints were written with ``torch.nn.utils.weight_norm``, which
stores a magnitude ``weight_g`` and a direction ``weight_v`` instead of
``weight``. These layers keep the same two parameters (so the state dict matches
the files) and compute ``weight = g * v / ||v||`` on the fly, where the norm is
taken over every dimension except ``dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_weight_norm(
    weight_g: torch.Tensor, weight_v: torch.Tensor, dim: int
) -> torch.Tensor:
    """Effective weight ``g * v / ||v||`` (norm over all dims except ``dim``)."""
    if dim < 0:
        dim += weight_v.dim()
    other = [d for d in range(weight_v.dim()) if d != dim]
    norm = torch.linalg.vector_norm(weight_v, dim=other, keepdim=True)
    return weight_v * (weight_g / norm)


class _WeightNormMixin:
    """Shared parameter layout of the weight-normalised convolutions."""

    weight_g: nn.Parameter
    weight_v: nn.Parameter
    wn_dim: int

    def _init_weight_norm(self, shape: tuple[int, ...], dim: int) -> None:
        g_shape = [1] * len(shape)
        g_shape[dim] = shape[dim]
        self.wn_dim = dim
        self.weight_v = nn.Parameter(torch.empty(shape))
        self.weight_g = nn.Parameter(torch.ones(g_shape))

    @property
    def weight(self) -> torch.Tensor:
        """The effective (folded) convolution weight."""
        return fold_weight_norm(self.weight_g, self.weight_v, self.wn_dim)


class WNConv1d(_WeightNormMixin, nn.Module):
    """``Conv1d`` with old-style weight norm (``dim=0`` as in VITS, ``dim=2`` as in
    the wav2vec positional convolution)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        dim: int = 0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        # Registration order (bias, g, v) mirrors the upstream state-dict order.
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_weight_norm((out_channels, in_channels // groups, kernel_size), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution to ``x`` of shape ``[B, C, T]``."""
        return F.conv1d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class WNConvTranspose1d(_WeightNormMixin, nn.Module):
    """``ConvTranspose1d`` with old-style weight norm over ``dim=0`` (in channels)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self._init_weight_norm((in_channels, out_channels, kernel_size), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the transposed convolution to ``x`` of shape ``[B, C, T]``."""
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding)
