"""Counter-based random numbers for denoising.

A draw is a pure function of ``(seed, stream, step, position, index)``, so a
request's noise does not depend on which other requests share its batch, on
how often it was preempted, or on whether a step was skipped. The engine's
torch path and the reference sampler use this definition of the random stream;
the Triton kernels (``dynin_vllm.kernels``) implement the same function.

The generator is SplitMix64: a per-(seed, stream, step, position) key, then the
``index``-th output of a SplitMix64 sequence started at that key. int64 tensor
arithmetic wraps modulo 2**64 on every backend, which SplitMix64 relies on.
"""

from __future__ import annotations

import torch

#: Streams (independent noise for independent uses).
GUMBEL = 0  # per (position, vocabulary id): token sampling
REMASK = 1  # per position: confidences for ``remasking="random"``
MASKGIT = 2  # per position: MaskGIT's randomised re-masking
LIKELIHOOD = 3  # per Monte Carlo batch and row: masking ratio and masked set


def _s64(value: int) -> int:
    """An unsigned 64-bit constant as a signed int64 value."""
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_MIX1 = _s64(0xBF58476D1CE4E5B9)
_MIX2 = _s64(0x94D049BB133111EB)
_STREAM = _s64(0xD1B54A32D192ED03)
_STEP = _s64(0xABC98388FB8FAC03)
_POS = _s64(0x8CB92BA72F3D8DD7)


def _srl(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function (a bijection on 64-bit words)."""
    x = (x ^ _srl(x, 30)) * _MIX1
    x = (x ^ _srl(x, 27)) * _MIX2
    return x ^ _srl(x, 31)


def row_keys(
    seed: torch.Tensor, stream: int, step: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """One 64-bit key per row from int64 ``seed``, ``step`` and ``position``."""
    key = mix64(seed.to(torch.int64) + _s64((stream * _STREAM) % (1 << 64)))
    key = mix64(key ^ (step.to(torch.int64) * _STEP))
    return mix64(key ^ (position.to(torch.int64) * _POS))


def uniform(keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in (0, 1): draw ``index`` of each key's sequence.

    ``keys`` and ``index`` broadcast against each other.
    """
    bits = mix64(keys + (index.to(torch.int64) + 1) * _GOLDEN)
    return (_srl(bits, 11).to(torch.float64) + 0.5) * (2.0**-53)


def uniform_rows(
    seed: torch.Tensor,
    stream: int,
    step: torch.Tensor,
    position: torch.Tensor,
    width: int,
    first_column: int = 0,
) -> torch.Tensor:
    """A ``[rows, width]`` float64 block of uniforms, one row per key, for
    columns ``first_column, ..., first_column + width - 1``."""
    keys = row_keys(seed, stream, step, position)
    index = torch.arange(first_column, first_column + width, device=keys.device)
    return uniform(keys[:, None], index[None, :])
