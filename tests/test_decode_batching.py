"""Image decodes of concurrent requests share batched MAGVIT-v2 calls."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from dynin_vllm.serving.decode_batching import DecodeBatcher
from dynin_vllm.serving.media_endpoints import Codecs


@pytest.fixture(scope="module")
def codecs(dynin_checkpoint):
    return Codecs(str(dynin_checkpoint), device="cpu")


def _codes(seed: int, grid: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 8192, grid, generator=generator)


def test_decodes_arriving_during_a_decode_share_the_next_batch(codecs):
    batches: list[tuple[int, tuple[int, int]]] = []
    release = threading.Event()

    def decode(codes, grid):
        batches.append((len(codes), grid))
        if len(batches) == 1:
            release.wait(timeout=60)  # the others queue behind this decode
        return codecs.decode_images(codes, grid)

    batcher = DecodeBatcher(decode)
    square = [_codes(i, (4, 4)) for i in range(4)]
    wide = _codes(9, (2, 8))

    async def run():
        first = asyncio.create_task(batcher.decode(square[:1], (4, 4)))
        while not batches:
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batcher.decode([c], (4, 4))) for c in square[1:]]
        other = asyncio.create_task(batcher.decode([wide], (2, 8)))
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*rest), await other

    (got_first,), rest, (got_wide,) = asyncio.run(run())
    assert batches == [(1, (4, 4)), (3, (4, 4)), (1, (2, 8))]
    alone = [codecs.decode_images([c], (4, 4))[0] for c in square]
    for got, want in zip([got_first, *(r[0] for r in rest)], alone, strict=True):
        assert got.shape == (64, 64, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got_wide.shape == (32, 128, 3)


def test_a_failed_decode_fails_its_batch_and_the_next_one_runs(codecs):
    calls = []

    def decode(codes, grid):
        calls.append(len(codes))
        if len(calls) == 1:
            raise RuntimeError("decoder out of memory")
        return codecs.decode_images(codes, grid)

    batcher = DecodeBatcher(decode)

    async def run():
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.decode([_codes(1, (4, 4))], (4, 4))
        return await batcher.decode([_codes(2, (4, 4))], (4, 4))

    (image,) = asyncio.run(run())
    assert image.shape == (64, 64, 3) and calls == [1, 1]
    with pytest.raises(ValueError, match="max_batch"):
        DecodeBatcher(decode, max_batch=0)
