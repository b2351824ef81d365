"""Row scoring: turn canvas logits into a chosen id and its confidence.

Plain-torch reference implementation. ``dynin_vllm.kernels.score_rows``
dispatches between this and the Triton kernel with the same signature.

For every row (one canvas position of one request):

1. optional classifier-free guidance with a paired unconditional row,
   ``u + (s+1)(c-u)`` (LLaDA) or ``(1+s)c - s*u`` (MaskGIT/MMaDA);
2. optional allowed-id ranges: logits outside them are ``-inf``;
3. the chosen id: plain argmax at temperature 0, else LLaDA's float64
   Gumbel-max ``argmax(exp(l) / (-log u)**T)`` with counter-based uniforms;
4. the confidence: the chosen id's softmax probability under the unperturbed
   (guided, restricted) distribution, returned in float64. Upstream computes
   the whole softmax in float64; here the exponentials and their sum stay in
   the logits' precision (float64 after CFG; float32 otherwise, as the Triton
   kernel computes them), which keeps the result within float32 rounding of
   upstream's at a fraction of the cost: a float64 sum of float32 values is
   several times slower on CPU than the whole rest of the scoring.
"""

from __future__ import annotations

import torch

from . import noise

CFG_LLADA = "llada"
CFG_MASKGIT = "maskgit"

#: Logits scored at once (rows x columns): bounds the float64 temporaries to
#: 16 rows of the real 138,752-id vocabulary, and scores narrow rows (a
#: restricted LM head, a small vocabulary) in few chunks.
CHUNK_ELEMENTS = 16 * 138_752


def rows_per_chunk(width: int) -> int:
    """How many ``width``-column rows one scoring chunk holds."""
    return max(1, CHUNK_ELEMENTS // max(1, width))


def guide(
    cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor, formula: str
) -> torch.Tensor:
    """Classifier-free guidance of ``[n, V]`` logits with per-row ``scale``."""
    s = scale.to(cond.dtype)[:, None]
    if formula == CFG_LLADA:
        return uncond + (s + 1) * (cond - uncond)
    if formula == CFG_MASKGIT:
        return (1 + s) * cond - s * uncond
    raise ValueError(f"unknown cfg formula {formula!r}")


def restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's allowed ``[lo, hi)`` ranges to ``-inf``.

    ``allowed`` is ``[n, R, 2]``; empty ranges (``lo == hi``) are padding.
    """
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    lo = allowed[..., 0:1]
    hi = allowed[..., 1:2]
    keep = ((vocab >= lo) & (vocab < hi)).any(dim=1)
    return logits.masked_fill(~keep, float("-inf"))


def score_rows_torch(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
    *,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: torch.Tensor | None = None,
    cfg_formula: str = CFG_LLADA,
    allowed: torch.Tensor | None = None,
    column_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``[N, V]`` logits rows; returns ``(ids [N] int64, conf [N] float64)``.

    ``temperature``, ``seed``, ``step``, ``position`` and ``cfg_scale`` are per
    row; rows with ``cfg_scale == 0`` ignore ``uncond_logits``. With
    ``column_offset`` the logits hold vocabulary columns ``column_offset,
    ...`` only (a restricted LM head): ``allowed`` and the returned ids are
    vocabulary ids, and the noise is drawn for the vocabulary columns, so the
    samples equal those from full-width logits.
    """
    if allowed is not None and column_offset:
        allowed = (allowed - column_offset).clamp(min=0)
    num_rows = logits.shape[0]
    chunk_rows = rows_per_chunk(logits.shape[-1])
    if num_rows <= chunk_rows:  # one chunk: no copies into the results
        return _score_chunk(
            logits,
            temperature,
            seed,
            step,
            position,
            uncond_logits,
            cfg_scale,
            cfg_formula,
            allowed,
            column_offset,
        )
    ids = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    conf = torch.empty(num_rows, dtype=torch.float64, device=logits.device)
    for start in range(0, num_rows, chunk_rows):
        rows = slice(start, min(start + chunk_rows, num_rows))
        ids[rows], conf[rows] = _score_chunk(
            logits[rows],
            temperature[rows],
            seed[rows],
            step[rows],
            position[rows],
            None if uncond_logits is None else uncond_logits[rows],
            None if cfg_scale is None else cfg_scale[rows],
            cfg_formula,
            None if allowed is None else allowed[rows],
            column_offset,
        )
    return ids, conf


def _score_chunk(
    chunk: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
    uncond_logits: torch.Tensor | None,
    cfg_scale: torch.Tensor | None,
    cfg_formula: str,
    allowed: torch.Tensor | None,
    column_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`score_rows_torch` of rows few enough to score at once."""
    if chunk.dtype not in (torch.float32, torch.float64):
        chunk = chunk.float()  # exact for bf16 / fp16
    if uncond_logits is not None and cfg_scale is not None:
        scale = cfg_scale.to(torch.float64)
        if bool((scale > 0).any()):
            chunk = chunk.double()
            guided = guide(chunk, uncond_logits.to(torch.float64), scale, cfg_formula)
            chunk = torch.where((scale > 0)[:, None], guided, chunk)
    first = 0
    if allowed is not None:
        # Only the columns the chunk's ranges span are scored: the others
        # are -inf, never chosen and worth 0 in the softmax.
        used = allowed[..., 1] > allowed[..., 0]
        if bool(used.any(dim=1).all()):
            first = int(allowed[..., 0][used].min())
            last = int(allowed[..., 1][used].max())
        else:  # a row allows nothing: keep every column (argmax gives 0)
            last = chunk.shape[-1]
        chunk = restrict(chunk[:, first:last], allowed - first)
    best, chosen = chunk.max(dim=-1)
    shifted = chunk - best[:, None]
    if not bool(temperature.any()):
        # Greedy rows: the chosen id is the maximum, its softmax probability
        # the reciprocal of the sum (the sum in the logits' precision).
        total = shifted.exp_().sum(dim=-1).double()
        return chosen + (first + column_offset), total.reciprocal()
    hot = temperature > 0
    temp = temperature[hot].to(torch.float64)
    u = noise.uniform_rows(
        seed[hot],
        noise.GUMBEL,
        step[hot],
        position[hot],
        chunk.shape[-1],
        column_offset + first,
    )
    perturbed = chunk[hot].double().exp() / (-torch.log(u)) ** temp[:, None]
    chosen[hot] = perturbed.argmax(dim=-1)
    # softmax(chunk)[chosen]: the sum in the logits' precision, the ratio in
    # float64 (distinct sums keep distinct confidences).
    picked = shifted.gather(-1, chosen[:, None]).squeeze(-1).double()
    total = shifted.exp_().sum(dim=-1).double()
    conf = torch.exp(picked) / total
    return chosen + (first + column_offset), conf


def random_confidence_torch(
    seed: torch.Tensor, step: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """Confidences for ``remasking="random"``: one float64 uniform per row."""
    return noise.uniform_rows(seed, noise.REMASK, step, position, 1)[:, 0]
