"""The filled prompt of an infilling request, from the engine to its client.

With ``infill`` the engine denoises the prompt's mask ids ("holes") in place,
but the prompt vLLM's front end reports back is the one it received. So the
scheduler attaches the holes' final values to a finishing request's output
(:func:`attach`), under :data:`FILLED_PROMPT_KEY` of its
``kv_transfer_params``, the one per-request mapping an engine output carries
to the front end; the front end's hook (:func:`apply_filled_prompt`) takes
them out again and rewrites the request's prompt. So ``RequestOutput.prompt``
and ``prompt_token_ids`` (offline), and over HTTP the echoed prompt and
``prompt_token_ids`` / ``prompt_text`` (with ``return_token_ids``), show the
filled prompt; ``kv_transfer_params`` is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Attribute of a step's ``ModelRunnerOutput`` holding ``{request id: values of
#: its holes}`` for the requests the step updated (runner to scheduler).
PROMPT_FILLS_ATTR = "dynin_prompt_fills"

#: Key of the filled holes inside an engine output's ``kv_transfer_params``.
FILLED_PROMPT_KEY = "dynin_filled_prompt"


def prompt_fills(model_runner_output: Any) -> dict[str, list[int]]:
    """The hole values a step reported (see :data:`PROMPT_FILLS_ATTR`)."""
    return getattr(model_runner_output, PROMPT_FILLS_ATTR, None) or {}


def attach(
    kv_transfer_params: dict[str, Any] | None,
    positions: Sequence[int],
    token_ids: Sequence[int],
) -> dict[str, Any]:
    """``kv_transfer_params`` carrying the holes' values at ``positions``."""
    payload = {"positions": list(positions), "token_ids": list(token_ids)}
    return {**(kv_transfer_params or {}), FILLED_PROMPT_KEY: payload}


def apply_filled_prompt(
    state: Any, kv_transfer_params: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Front end: rewrite ``state``'s prompt with the attached fills, if any.

    ``state`` is vLLM's per-request output state (``prompt`` and
    ``prompt_token_ids``); returns ``kv_transfer_params`` without the fills.
    """
    if not kv_transfer_params or FILLED_PROMPT_KEY not in kv_transfer_params:
        return kv_transfer_params
    rest = dict(kv_transfer_params)
    payload = rest.pop(FILLED_PROMPT_KEY)
    positions, values = payload["positions"], payload["token_ids"]
    original = list(state.prompt_token_ids or ())
    if original and positions and max(positions) < len(original):
        filled = list(original)
        for position, token in zip(positions, values, strict=True):
            filled[position] = token
        if isinstance(state.prompt, str):
            tokenizer = getattr(state.detokenizer, "tokenizer", None)
            holes = [original[p] for p in positions]
            state.prompt = fill_text(state.prompt, tokenizer, holes, values)
        state.prompt_token_ids = filled
    return rest or None


def fill_text(
    prompt: str, tokenizer: Any, holes: Sequence[int], values: Sequence[int]
) -> str:
    """``prompt`` with its mask-token strings replaced by the fills' text.

    Left as it is when there is no tokenizer, or when the prompt does not spell
    each hole as the mask token (a prompt given as token ids decodes to text
    whose holes vLLM may have rendered differently).
    """
    if tokenizer is None or not holes:
        return prompt
    mask_text = tokenizer.decode([holes[0]], skip_special_tokens=False)
    pieces = prompt.split(mask_text) if mask_text else []
    if len(pieces) != len(holes) + 1:
        return prompt
    out = [pieces[0]]
    for value, hole, piece in zip(values, holes, pieces[1:], strict=True):
        text = (
            mask_text
            if value == hole
            else tokenizer.decode([value], skip_special_tokens=False)
        )
        out += [text, piece]
    return "".join(out)
