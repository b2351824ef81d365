"""Previews of a denoising canvas, from the engine to its client.

A MaskGIT request (image generation or editing) that sets ``num_previews``
gets, after each of those steps, the canvas's current prediction: every slot
filled, the committed codes where the canvas has them and the step's samples
elsewhere, which is what upstream's ``t2i_generate_decoding_stepwise``
decodes. Nothing is emitted while a canvas denoises, so the previews travel
beside the tokens:

1. the runner reports ``{request id: tokens}`` in the step's
   ``ModelRunnerOutput`` under :data:`PREVIEWS_ATTR`;
2. the scheduler adds a token-less output for each previewed request, whose
   ``kv_transfer_params`` (the one per-request mapping an engine output carries
   to the front end) hold *every* preview so far under :data:`PREVIEW_KEY`,
   and puts them on the request's final output too. vLLM's front end merges
   the outputs a slow consumer has not taken yet, keeping the last
   ``kv_transfer_params``; carrying all of them means none is lost;
3. a client that streams (``RequestOutputKind.DELTA`` or ``CUMULATIVE``) reads
   them with :func:`previews_of` from any ``RequestOutput``; a ``FINAL_ONLY``
   client (``LLM.generate``) finds them all on the final output.
"""

from __future__ import annotations

from typing import Any

#: Attribute of a step's ``ModelRunnerOutput`` holding ``{request id: tokens}``
#: for the requests whose step was previewed (runner to scheduler).
PREVIEWS_ATTR = "dynin_previews"

#: Key of the previewed tokens inside an engine output's ``kv_transfer_params``.
PREVIEW_KEY = "dynin_preview"


def step_previews(model_runner_output: Any) -> dict[str, list[int]]:
    """The previews a step reported (see :data:`PREVIEWS_ATTR`)."""
    return getattr(model_runner_output, PREVIEWS_ATTR, None) or {}


def preview_params(
    previews: list[list[int]], kv_transfer_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``kv_transfer_params`` carrying ``previews`` (every one so far)."""
    return {**(kv_transfer_params or {}), PREVIEW_KEY: [list(p) for p in previews]}


def previews_of(output: Any) -> list[list[int]]:
    """Every preview a ``RequestOutput`` carries, oldest first (answer
    tokens, as the final output's)."""
    params = getattr(output, "kv_transfer_params", None)
    if not params or PREVIEW_KEY not in params:
        return []
    return [list(p) for p in params[PREVIEW_KEY]]
