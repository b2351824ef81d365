"""Previews of a denoising canvas, from the engine to its client.

A MaskGIT request (image generation or editing) that sets ``preview_steps``
gets, after each of those steps, the canvas's current prediction: every slot
filled, the committed codes where the canvas has them and the step's samples
elsewhere, which is what upstream's ``t2i_generate_decoding_stepwise``
decodes. Nothing is emitted while a canvas denoises, so the preview travels
beside the tokens:

1. the runner reports ``{request id: tokens}`` in the step's
   ``ModelRunnerOutput`` under :data:`PREVIEWS_ATTR`;
2. the scheduler adds a token-less output for each previewed request, whose
   ``kv_transfer_params`` (the one per-request mapping an engine output carries
   to the front end) hold the tokens under :data:`PREVIEW_KEY`;
3. a client that streams (``RequestOutputKind.DELTA`` or ``CUMULATIVE``) reads
   them with :func:`preview_tokens` from the ``RequestOutput``; a
   ``FINAL_ONLY`` client (``LLM.generate``) never sees them.
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


def preview_params(tokens: list[int]) -> dict[str, Any]:
    """``kv_transfer_params`` of a preview output."""
    return {PREVIEW_KEY: list(tokens)}


def preview_tokens(output: Any) -> list[int] | None:
    """The previewed answer tokens a ``RequestOutput`` carries, if any."""
    params = getattr(output, "kv_transfer_params", None)
    if not params or PREVIEW_KEY not in params:
        return None
    return list(params[PREVIEW_KEY])
