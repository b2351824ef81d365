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
- ``dual``: Fast-dLLM's dual cache (``generate_with_dual_cache``): at each
  block start one full forward whose logits drive the block's first step and
  whose KV of every position (prompt, committed blocks *and* the masked
  suffix) is kept; later steps forward only the current block, attending to
  the cached prefix, themselves and the cached suffix. Upstream runs one more
  forward when the first step already filled the block; it commits nothing
  and is skipped here;
- ``block``: the prompt's KV and each committed block's KV are computed once,
  in the forward that also carries the next block's first canvas (so each
  sees itself, everything before it and that canvas), and never refreshed;
  steps forward only the current block.

Randomness (Gumbel noise for temperature > 0, random remasking) comes from the
counter-based stream of :mod:`dynin_vllm.kernels.noise`, indexed by
``(seed, block * stride + step, answer position)``, so a seeded run is
reproducible draw for draw. Ties in confidence go to the lower position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dynin_vllm.kernels import noise
from dynin_vllm.reference.model import ReferenceLLaDA, tail, truncate

MASK_ID = 126336


@dataclass
class ReferenceResult:
    answer: list[int]  # the whole answer region (EOS fill included)
    nfe: int  # forwards that produced logits for a step (CFG pairs count once)
    prompt: list[int] = field(default_factory=list)  # holes filled (``infill``)
    # The prompt as it stood after each block (a request ends at its EOS block).
    prompt_after_block: list[list[int]] = field(default_factory=list)


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
    infill: bool = False,
) -> ReferenceResult:
    """Denoise one answer of ``gen_length`` tokens after ``prompt``.

    With ``infill``, mask ids in the prompt ("holes") are filled too. Threshold
    and factor decoding are upstream's: an open hole is a candidate of every
    step that computes its logits (``exact``: every step, as Fast-dLLM's
    ``generate``; ``prefix``: each block's first, full forward, as its
    ``generate_with_prefix_cache``); a block ends when it has no mask left;
    holes open after the last block stay mask ids. With a fixed number of
    steps upstream counts only the block's masks and then runs out of
    schedule (Fast-dLLM) or leaves answer masks (LLaDA); here the schedule of
    a block spreads its masks *and* the open holes, every step shows the
    holes (in ``prefix`` a step is a full forward while holes are open), and
    the block ends when both are filled: the first block that denoises fills
    every hole. With CFG the unconditional row masks the prompt's other
    tokens and shows the holes' current values (LLaDA's
    ``un_x[prompt_index] = mask_id``).
    """
    answer = list(canvas) if canvas is not None else [mask_id] * gen_length
    gen_length = len(answer)
    prompt = list(prompt)
    plen = len(prompt)
    if infill and mode == "block":
        raise ValueError("block mode keeps prompt mask ids fixed")
    holes = [p for p, tok in enumerate(prompt) if tok == mask_id] if infill else []
    block_len = max(1, min(block_length, gen_length))
    num_blocks = math.ceil(gen_length / block_len)
    per_block = max(1, (steps if steps is not None else gen_length) // num_blocks)
    stride = max(per_block, block_len)
    dynamic = threshold is not None or factor is not None
    mirror = cfg_scale > 0 and not uncond_prompt  # the default unconditional row

    def heads() -> list[list[int]]:
        rows = [list(prompt)]
        if cfg_scale > 0:
            if uncond_prompt:
                rows.append(list(uncond_prompt))
            else:
                un = [mask_id] * plen
                for p in holes:
                    un[p] = prompt[p]
                rows.append(un)
        return rows

    caches: list = [None] * (2 if cfg_scale > 0 else 1)
    nfe = 0
    prompt_after_block: list[list[int]] = []
    for b in range(num_blocks):
        bs, be = b * block_len, min((b + 1) * block_len, gen_length)
        masked = sum(t == mask_id for t in answer[bs:be])
        masked += sum(prompt[p] == mask_id for p in holes)
        schedule = None if dynamic else num_transfer_tokens(masked, per_block)
        i = 0

        while True:
            open_now = [p for p in holes if prompt[p] == mask_id]
            # (A hole stays open past the schedule only by a committed mask id.)
            in_schedule = not dynamic and i < len(schedule) and schedule[i] > 0
            holes_pending = in_schedule and bool(open_now)
            if mask_id not in answer[bs:be] and not holes_pending:
                break
            # A full forward: every step in exact, a block's first in prefix
            # and dual, and (fixed steps) every step while holes are open.
            full_step = mode == "exact" or (
                mode in ("prefix", "dual") and (i == 0 or holes_pending)
            )
            open_holes = open_now if full_step else []
            block_logits, hole_logits = [], []
            for n, head in enumerate(heads()):
                seq = torch.tensor([head + answer])
                start = len(head) + bs
                full = None
                if mode == "exact":
                    full = model.logits(seq)[0]
                    rows = full[start : start + be - bs]
                elif mode == "prefix":
                    if full_step:
                        out, cache = model.forward(seq, return_cache=True)
                        full = out[0]
                        caches[n] = truncate(cache, start)
                        rows = full[start : start + be - bs]
                    else:
                        out, _ = model.forward(
                            seq[:, start:], start=start, cache=caches[n]
                        )
                        rows = out[0, : be - bs]
                elif mode == "dual":
                    end = start + be - bs
                    if full_step:
                        out, caches[n] = model.forward(seq, return_cache=True)
                        full = out[0]
                        rows = full[start:end]
                    else:
                        out, _ = model.forward(
                            seq[:, start:end],
                            start=start,
                            cache=truncate(caches[n], start),
                            suffix=tail(caches[n], end),
                        )
                        rows = out[0]
                elif mode == "block":
                    cached = 0 if caches[n] is None else caches[n][0][0].shape[2]
                    if i == 0 and cached < start:
                        # Committed blocks not cached yet enter the cache now,
                        # together with this block's first canvas.
                        out, cache = model.forward(
                            seq[:, cached : start + be - bs],
                            start=cached,
                            cache=caches[n] if cached else None,
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
                if open_holes and (n == 0 or mirror):
                    hole_logits.append(full[open_holes])
            nfe += 1

            def guided(rows: list[torch.Tensor]) -> torch.Tensor:
                if len(rows) < 2:
                    return rows[0]
                return rows[1] + (cfg_scale + 1) * (rows[0] - rows[1])

            logits = guided(block_logits)
            positions = list(range(bs, be))
            if open_holes:
                logits = torch.cat([guided(hole_logits), logits])
                positions = [p - plen for p in open_holes] + positions
            t = b * stride + i
            x0, conf = _choose(logits, temperature, seed, t, positions)
            if remasking == "random":
                u = noise.uniform_rows(
                    torch.full((len(positions),), seed),
                    noise.REMASK,
                    torch.full((len(positions),), t),
                    torch.tensor(positions),
                    1,
                )
                conf = u[:, 0].tolist()
            editable = [True] * len(open_holes)
            editable += [tok == mask_id for tok in answer[bs:be]]
            k = None if dynamic else schedule[i]
            for j in _select(conf, editable, k, threshold, factor):
                if j < len(open_holes):
                    prompt[open_holes[j]] = x0[j]
                else:
                    answer[bs + j - len(open_holes)] = x0[j]
            i += 1
        prompt_after_block.append(list(prompt))
    return ReferenceResult(
        answer=answer, nfe=nfe, prompt=prompt, prompt_after_block=prompt_after_block
    )


def truncate_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Tokens up to and including the first EOS, as vLLM reports them."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1]
    return tokens
