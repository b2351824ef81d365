"""The kernels' counter-based noise equals ``dynin_vllm.kernels.noise``."""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.kernels import noise


@pytest.mark.parametrize("stream", [noise.GUMBEL, noise.REMASK, noise.MASKGIT])
def test_uniforms_bit_exact(ops, stream: int) -> None:
    gen = torch.Generator().manual_seed(stream)
    rows = 5
    seed = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen)
    seed[0] = 0
    seed[1] = -1
    step = torch.randint(0, 2**40, (rows,), generator=gen)
    position = torch.randint(0, 2**20, (rows,), generator=gen)
    width = 1000  # not a power of two: the last block is partial
    got, _ = ops.uniform_triton(seed, stream, step, position, width)
    want = noise.uniform_rows(seed, stream, step, position, width)
    assert torch.equal(got, want)


def _exponential_reference(bits: torch.Tensor) -> torch.Tensor:
    """float64 ``-log(u)`` computed without cancellation near ``u = 1``."""
    k = noise._srl(bits, 11)
    u = (k.to(torch.float64) + 0.5) * 2.0**-53
    d = (((1 << 53) - 1 - k).to(torch.float64) + 0.5) * 2.0**-53
    return torch.where(k < (1 << 52), -torch.log(u), -torch.log1p(-d))


def test_exponential_keeps_the_float64_tail(ops) -> None:
    """E = -log(u) in float32 stays accurate for u within 2**-53 of 0 and 1.

    A float32 ``u`` would round every u > 1 - 2**-25 to 1 (E = 0, an infinite
    Gumbel value) and truncate the Gumbel tail, as arXiv 2409.02908 warns.
    """
    top = (1 << 53) - 1
    ks = [0, 1, 2, 1000, (1 << 52) - 1, 1 << 52, (1 << 52) + 1]
    ks += [top - j for j in (0, 1, 2, 3, 1000, 1 << 20, 1 << 30, 1 << 40)]
    k = torch.tensor(ks, dtype=torch.int64)
    gen = torch.Generator().manual_seed(1)
    k = torch.cat([k, torch.randint(0, 1 << 53, (4000,), generator=gen)])
    low_bits = torch.randint(0, 1 << 11, k.shape, generator=gen)
    bits = (k << 11) | low_bits  # the 11 low bits are discarded by the generator
    got = ops.exponential32_triton(bits).to(torch.float64)
    want = _exponential_reference(bits)
    assert torch.isfinite(got).all() and (got > 0).all()
    rel = ((got - want) / want).abs()
    assert rel.max().item() < 2e-6, rel.max().item()
    # The extreme Gumbel values equal float64's (about +37.4 and -3.6).
    assert abs(-got[7].log().item() - (-want[7].log().item())) < 1e-5
    assert -got[7].log().item() > 37.0
