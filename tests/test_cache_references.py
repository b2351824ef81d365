"""The cache semantics of the reference samplers, on the tiny checkpoint.

``dual`` is Fast-dLLM's ``generate_with_dual_cache``: a block's later steps
forward only the block against the KV that the block's first, full forward
cached for every other position (prefix *and* masked suffix).
"""

from __future__ import annotations

import torch

from dynin_vllm.reference.model import tail, truncate
from dynin_vllm.reference.sampler import generate

PROMPT = [126080, *range(200, 230)]
MASK = 126336


def test_a_dual_step_attends_to_the_cached_suffix(reference_model):
    answer = [MASK] * 24
    seq = torch.tensor([PROMPT + answer])
    start, end = len(PROMPT) + 8, len(PROMPT) + 16
    full, cache = reference_model.forward(seq, return_cache=True)
    block = seq[:, start:end]
    dual, _ = reference_model.forward(
        block, start=start, cache=truncate(cache, start), suffix=tail(cache, end)
    )
    prefix_only, _ = reference_model.forward(
        block, start=start, cache=truncate(cache, start)
    )
    # Unchanged inputs: the dual step is the full forward's block rows.
    torch.testing.assert_close(dual[0], full[0, start:end], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(prefix_only[0], full[0, start:end], atol=1e-4)


def test_dual_with_one_step_per_block_is_exact(reference_model):
    kwargs = dict(gen_length=24, block_length=8, steps=3)
    dual = generate(reference_model, PROMPT, mode="dual", **kwargs)
    exact = generate(reference_model, PROMPT, mode="exact", **kwargs)
    assert dual.answer == exact.answer and dual.nfe == exact.nfe == 3


def test_dual_over_one_block_is_prefix(reference_model):
    """With the whole answer in one block there is no suffix to cache."""
    kwargs = dict(gen_length=16, block_length=16, steps=8, temperature=0.7, seed=3)
    dual = generate(reference_model, PROMPT, mode="dual", **kwargs)
    prefix = generate(reference_model, PROMPT, mode="prefix", **kwargs)
    assert dual.answer == prefix.answer and dual.nfe == prefix.nfe == 8


def test_every_mode_takes_the_schedules_forwards(reference_model):
    for mode in ("exact", "prefix", "dual", "block"):
        result = generate(
            reference_model, PROMPT, mode=mode, gen_length=32, block_length=8, steps=8
        )
        assert result.nfe == 8, mode
