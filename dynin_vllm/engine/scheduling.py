"""Pure scheduling rules of the masked-diffusion scheduler.

Kept apart from ``scheduler.py`` so they are plain functions of request ids
and token counts, tested without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A running request as the fitting rule sees it."""

    req_id: str
    need: int  # tokens it must forward this step (prompt/canvas not yet computed)
    partner: str | None = None  # its CFG partner, if it is half of a pair


def sit_out(running: Sequence[Candidate], budget: int) -> set[str]:
    """Running requests that cannot run whole this step.

    Walks ``running`` in order (vLLM's priority order), giving each request,
    or each CFG pair as one unit, its whole need out of ``budget``. A unit
    that does not fit sits this step out (a partial canvas would change the
    attention); so does half of a pair whose partner is not running.
    """
    present = {c.req_id: c for c in running}
    out: set[str] = set()
    seen: set[str] = set()
    for cand in running:
        if cand.req_id in seen:
            continue
        unit = [cand]
        if cand.partner is not None:
            partner = present.get(cand.partner)
            if partner is None:
                out.add(cand.req_id)
                continue
            unit.append(partner)
            seen.add(partner.req_id)
        need = sum(c.need for c in unit)
        if need > budget:
            out.update(c.req_id for c in unit)
        else:
            budget -= need
    return out


def restore_order(
    original: Sequence[str], hidden: set[str], after: Sequence[str]
) -> list[str]:
    """The running order after a step that ran without the ``hidden`` requests.

    ``original`` is the running order before the step, ``after`` the order
    vLLM's scheduler left. Hidden requests return to their places; requests
    the step preempted stay out; requests it admitted follow, in its order.
    """
    still = set(after)
    kept = [r for r in original if r in hidden or r in still]
    in_kept = set(kept)
    return kept + [r for r in after if r not in in_kept]


def broken_pairs(
    running: Sequence[str], partner_of: Mapping[str, str], known: set[str]
) -> list[str]:
    """Running halves of CFG pairs whose other half exists but is not running.

    Such a request cannot step; it is preempted so the pair restarts together.
    """
    present = set(running)
    return [
        r
        for r in running
        if (p := partner_of.get(r)) is not None and p not in present and p in known
    ]


def committed_in_step(
    canvas: Sequence[int],
    num_emitted: int,
    next_canvas: Sequence[int] | None,
    mask_id: int,
) -> int:
    """Tokens a denoising step committed, from the canvases around it.

    ``canvas`` is what the step forwarded (the answer from the first
    uncommitted position), ``num_emitted`` the tokens it emitted from the
    front of it, and ``next_canvas`` the canvas of the next step, which starts
    right after the emitted tokens (``None`` once the request has finished).
    Emitted tokens are final, so every mask among them was committed; past
    them, the masks that the next canvas no longer has were committed too.
    """
    committed = list(canvas[:num_emitted]).count(mask_id)
    if next_canvas is None:
        return committed
    rest = canvas[num_emitted:]
    overlap = list(next_canvas[: len(rest)])
    before = list(rest[: len(overlap)]).count(mask_id)
    after = overlap.count(mask_id)
    return committed + max(0, before - after)
