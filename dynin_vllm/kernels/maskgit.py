"""MaskGIT re-masking (MMaDA / Dynin-Omni image generation): torch reference.

Upstream ``t2i_generate`` / ``i2i_generate`` (after Show-o and MUSE), for
step ``s`` of ``S`` over ``N`` image slots of a request:

1. every still-masked slot gets a candidate sampled at temperature 1 from the
   guided, codebook-restricted softmax; its confidence ``p`` is the sampled
   id's probability (``score_rows`` with ``cfg_formula="maskgit"``, an
   ``allowed`` codebook range and temperature 1 gives both);
2. ``mask_len = floor(N * cos(pi/2 * (s+1)/S))`` (float32, as upstream),
   clamped to ``[1, #unknown - 1]`` (:func:`cosine_mask_len`);
3. the noise temperature is annealed *cumulatively*:
   ``T_s = T_0 * prod_{j<=s} (1 - (j+1)/S)`` (:func:`annealed_temperature`);
4. ``mask_by_random_topk``: ``conf = log(clamp(p, 1e-20)) + T_s * g`` with
   Gumbel noise ``g = -log(-log(u))``; ``cut = sort(conf)[mask_len]``; slots
   with ``conf < cut`` are re-masked, all other unknown slots commit their
   candidate (ties at the cut stay committed, so fewer than ``mask_len`` slots
   may be re-masked).

Differences from upstream, by design:

- the uniforms come from the counter-based generator (``noise.MASKGIT``
  stream, one draw per (seed, step, absolute position)), in float64; with
  53-bit uniforms the upstream clamps to ``1e-20`` inside the Gumbel noise
  never bind, so they are left out;
- known (already committed) slots rank above every unknown one (``+inf``
  rather than ``log(finfo.max) + T*g``) and are never re-masked; upstream
  could re-mask one only with a Gumbel gap above ``88/T``;
- upstream's last step re-masks one slot but returns the last step's samples
  for every slot; here the last step (``mask_len == 0``, see
  :func:`cosine_mask_len`) commits every unknown slot, which yields the same
  final image tokens.
"""

from __future__ import annotations

import math

import torch

from . import noise


def cosine_mask_len(num_slots: int, step: int, total_steps: int) -> int:
    """Masks left after ``step`` (0-based) of ``total_steps``, before clamping.

    Computed as upstream (float32 ``torch.cos`` of the float32 ratio), except
    that the final step gives ``0`` ("commit everything"); other steps give at
    least 1 (upstream's clamp then gives the same result).
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    if step == total_steps - 1:
        return 0
    ratio = 1.0 * (step + 1) / total_steps
    mask_ratio = torch.cos(torch.tensor(ratio, dtype=torch.float32) * math.pi * 0.5)
    return max(1, int((num_slots * mask_ratio).floor()))


def annealed_temperature(initial: float, step: int, total_steps: int) -> float:
    """Upstream's cumulatively annealed noise temperature at ``step``."""
    temperature = float(initial)
    for j in range(step + 1):
        temperature = temperature * (1.0 - 1.0 * (j + 1) / total_steps)
    return temperature


def maskgit_confidence_torch(
    probs: torch.Tensor,
    editable: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Noisy float64 confidences ``[R, W]``: ``log(clamp(p)) + T*g``, ``+inf``
    where not editable.

    ``temperature`` (the annealed one), ``seed``, ``step`` and ``position``
    are per request; column ``w`` draws its uniform from the key of absolute
    position ``position + w``.
    """
    width = probs.shape[1]
    cols = torch.arange(width, device=probs.device, dtype=torch.int64)
    keys = noise.row_keys(
        seed.to(torch.int64)[:, None],
        noise.MASKGIT,
        step.to(torch.int64)[:, None],
        position.to(torch.int64)[:, None] + cols[None, :],
    )
    u = noise.uniform(keys, torch.zeros_like(keys))
    gumbel = -torch.log(-torch.log(u))
    temp = temperature.to(torch.float64)[:, None]
    conf = torch.log(probs.to(torch.float64).clamp(min=1e-20)) + temp * gumbel
    return conf.masked_fill(~editable, float("inf"))


def maskgit_remask_torch(
    conf: torch.Tensor, editable: torch.Tensor, mask_len: torch.Tensor
) -> torch.Tensor:
    """Boolean ``[R, W]``: editable slots to re-mask, as ``mask_by_random_topk``.

    ``conf`` from :func:`maskgit_confidence_torch`; ``mask_len`` per request
    from :func:`cosine_mask_len` (``0``: re-mask nothing).
    """
    num_editable = editable.sum(dim=1)
    clamped = torch.clamp(
        torch.minimum(num_editable - 1, mask_len.to(num_editable.dtype)), min=1
    )
    # Past the last slot the cut is +inf, as every known slot's confidence.
    padded = torch.cat(
        [torch.sort(conf, dim=1).values, conf.new_full((conf.shape[0], 1), math.inf)],
        dim=1,
    )
    cut = padded.gather(1, clamped[:, None].clamp(max=conf.shape[1]))
    remask = (conf < cut) & editable
    return remask & (mask_len > 0)[:, None]


def maskgit_commit_torch(
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    mask_len: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MaskGIT step over ``[R, W]`` canvases; writes ``canvas`` in place.

    ``candidates`` and ``confidence`` (the sampled ids and their
    probabilities), ``editable`` (still-masked slots); per request
    ``mask_len`` (:func:`cosine_mask_len`), ``temperature`` (annealed,
    :func:`annealed_temperature`), ``seed``, ``step`` and ``position`` (the
    noise counter of column 0). Editable slots not re-masked take their
    candidate; the rest of the canvas is untouched. Returns
    ``(num_committed [R] int64, done [R] bool)``.
    """
    conf = maskgit_confidence_torch(
        confidence, editable, temperature, seed, step, position
    )
    remask = maskgit_remask_torch(conf, editable, mask_len)
    selected = editable & ~remask
    canvas.copy_(torch.where(selected, candidates, canvas))
    num_committed = selected.sum(dim=1)
    done = remask.sum(dim=1) == 0
    return num_committed, done


__all__ = [
    "annealed_temperature",
    "cosine_mask_len",
    "maskgit_commit_torch",
    "maskgit_confidence_torch",
    "maskgit_remask_torch",
]
