"""Reference text samplers: the upstream block-wise masked-denoising loops.

Single request, plain loops, written from the upstream definitions (LLaDA
``generate``, Fast-dLLM ``generate`` / ``generate_with_prefix_cache`` and their
``get_transfer_index`` / ``get_transfer_index_dynamic``), independently of the
engine. Three cache semantics:

- ``exact``: every step forwards the whole sequence (LLaDA / Fast-dLLM
  without cache);
- ``prefix``: Fast-dLLM's prefix cache: at each block start one full forward
  whose logits drive the block's first step and whose KV of the prompt and the
  committed blocks is kept; later steps forward the current block plus the
  masked suffix against that cache;
- ``block``: the prompt's KV is computed alone; each committed block's KV is
  computed once, in the forward that also carries the next block's first
  canvas (so it sees itself, everything before it and that canvas), and never
  refreshed; steps forward only the current block.

Randomness (Gumbel noise for temperature > 0, random remasking) comes from the
counter-based stream of :mod:`dynin_vllm.kernels.noise`, indexed by
``(seed, block * stride + step, answer position)``, so a seeded run is
reproducible draw for draw. Ties in confidence go to the lower position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dynin_vllm.kernels import noise
from dynin_vllm.reference.model import ReferenceLLaDA, truncate

MASK_ID = 126336


@dataclass
class ReferenceResult:
    answer: list[int]  # the whole answer region (EOS fill included)
    nfe: int  # forwards that produced logits for a step (CFG pairs count once)


def num_transfer_tokens(num_masked: int, steps: int) -> list[int]:
    """Upstream ``get_num_transfer_tokens`` for one row."""
    base, remainder = num_masked // steps, num_masked % steps
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def _choose(
    logits: torch.Tensor, temperature: float, seed: int, step: int, positions: list[int]
) -> tuple[list[int], list[float]]:
    """Chosen ids and float64 softmax confidences for ``[n, V]`` block logits."""
    l64 = logits.to(torch.float64)
    if temperature == 0:
        x0 = l64.argmax(-1)
    else:
        n, vocab = l64.shape
        u = noise.uniform_rows(
            torch.full((n,), seed),
            noise.GUMBEL,
            torch.full((n,), step),
            torch.tensor(positions),
            vocab,
        )
        x0 = (l64.exp() / (-torch.log(u)) ** temperature).argmax(-1)
    probs = torch.softmax(l64, dim=-1)
    conf = probs.gather(-1, x0[:, None]).squeeze(-1)
    return x0.tolist(), conf.tolist()


def _ranked(conf: list[float], editable: list[bool]) -> list[int]:
    """Editable indices by descending confidence, ties to the lower index."""
    return sorted(
        (j for j in range(len(conf)) if editable[j]), key=lambda j: (-conf[j], j)
    )


def _select(
    conf: list[float],
    editable: list[bool],
    k: int | None,
    threshold: float | None,
    factor: float | None,
) -> list[int]:
    order = _ranked(conf, editable)
    if not order:
        return []
    if factor is not None:  # get_transfer_index_dynamic
        bars = [1 - factor / (n + 1) for n in range(1, len(order) + 1)]
        bars[0] = -1
        top = 0
        for top in range(len(bars)):
            if conf[order[top]] < bars[top]:
                break
        if top == 0 or top == len(bars) - 1:
            top += 1
        return order[:top]
    if threshold is not None:  # get_transfer_index with a threshold
        return [order[0]] + [j for j in order[1:] if conf[j] >= threshold]
    return order[:k]


def generate(
    model: ReferenceLLaDA,
    prompt: list[int],
    *,
    gen_length: int,
    block_length: int,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    factor: float | None = None,
    cfg_scale: float = 0.0,
    mode: str = "exact",
    seed: int = 0,
    mask_id: int = MASK_ID,
    canvas: list[int] | None = None,
    uncond_prompt: list[int] | None = None,
) -> ReferenceResult:
    """Denoise one answer of ``gen_length`` tokens after ``prompt``."""
    answer = list(canvas) if canvas is not None else [mask_id] * gen_length
    gen_length = len(answer)
    plen = len(prompt)
    block_len = max(1, min(block_length, gen_length))
    num_blocks = math.ceil(gen_length / block_len)
    per_block = max(1, (steps if steps is not None else gen_length) // num_blocks)
    stride = max(per_block, block_len)
    dynamic = threshold is not None or factor is not None
    branches = [list(prompt)]
    if cfg_scale > 0:
        branches.append(list(uncond_prompt) if uncond_prompt else [mask_id] * plen)

    caches: list = [None] * len(branches)
    nfe = 0
    for b in range(num_blocks):
        bs, be = b * block_len, min((b + 1) * block_len, gen_length)
        masked = sum(t == mask_id for t in answer[bs:be])
        schedule = None if dynamic else num_transfer_tokens(masked, per_block)
        i = 0
        while any(t == mask_id for t in answer[bs:be]):
            block_logits = []
            for n, head in enumerate(branches):
                seq = torch.tensor([head + answer])
                start = len(head) + bs
                if mode == "exact":
                    rows = model.logits(seq)[0, start : start + be - bs]
                elif mode == "prefix":
                    if i == 0:
                        full, cache = model.forward(seq, return_cache=True)
                        caches[n] = truncate(cache, start)
                        rows = full[0, start : start + be - bs]
                    else:
                        out, _ = model.forward(
                            seq[:, start:], start=start, cache=caches[n]
                        )
                        rows = out[0, : be - bs]
                elif mode == "block":
                    if caches[n] is None:  # the prompt's KV, computed alone
                        _, caches[n] = model.forward(
                            seq[:, : len(head)], return_cache=True
                        )
                    cached = caches[n][0][0].shape[2]
                    if i == 0 and cached < start:
                        # Committed blocks not cached yet enter the cache now,
                        # together with this block's first canvas.
                        out, cache = model.forward(
                            seq[:, cached : start + be - bs],
                            start=cached,
                            cache=caches[n],
                            return_cache=True,
                        )
                        caches[n] = truncate(cache, start)
                        rows = out[0, start - cached :]
                    else:
                        out, _ = model.forward(
                            seq[:, start : start + be - bs],
                            start=start,
                            cache=caches[n],
                        )
                        rows = out[0]
                else:
                    raise ValueError(f"unknown mode {mode!r}")
                block_logits.append(rows)
            nfe += 1
            logits = block_logits[0]
            if cfg_scale > 0:
                un = block_logits[1]
                logits = un + (cfg_scale + 1) * (logits - un)
            t = b * stride + i
            positions = list(range(bs, be))
            x0, conf = _choose(logits, temperature, seed, t, positions)
            if remasking == "random":
                u = noise.uniform_rows(
                    torch.full((be - bs,), seed),
                    noise.REMASK,
                    torch.full((be - bs,), t),
                    torch.tensor(positions),
                    1,
                )
                conf = u[:, 0].tolist()
            editable = [tok == mask_id for tok in answer[bs:be]]
            k = None if dynamic else schedule[i]
            for j in _select(conf, editable, k, threshold, factor):
                answer[bs + j] = x0[j]
            i += 1
    return ReferenceResult(answer=answer, nfe=nfe)


def truncate_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Tokens up to and including the first EOS, as vLLM reports them."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1]
    return tokens
