"""The one parse of masked-diffusion request parameters, in the front end.

vLLM validates requests in its front end, before they reach the engine core,
and turns errors there into HTTP 400 responses. The V1 front end runs the
``validate_params`` hook of the model's logits-processor classes for every
request, so the parse rides on a logits-processor class that is never
instantiated (the config hook lists it in ``model_config.logits_processors``;
the worker hides it from the model runner).

The parse merges the request's ``extra_args`` over the checkpoint's defaults
(``generation_config.json`` and ``--override-generation-config``) and writes
the complete result into ``extra_args`` under
:data:`~dynin_vllm.diffusion.params.RESOLVED_KEY`. The engine reads exactly
that result and never parses again (:func:`resolved_params`): a request runs
with the parameters it asked for, or gets a 400.

The hook is a classmethod that sees only the request, so the engine facts it
needs (defaults, vocabulary size, context length) are carried by the *name*
under which the config hook lists the validator: :func:`validator_name`
encodes them, and this module's ``__getattr__`` builds the class for a name
when vLLM's loader looks it up. No module state is set by the config hook,
and two engines in one process each get their own validator.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor

from dynin_vllm.diffusion.params import (
    GENERATION_TASKS,
    MEDIA_TASKS,
    PARAM_NAMES,
    RESOLVED_KEY,
    DiffusionParamError,
    DiffusionParams,
    fold_seed,
    parse_params,
    unknown_params,
)
from dynin_vllm.multimodal.settings import ASR_ANSWER_LENGTH

#: Attribute-name prefix of the per-engine validator classes.
VALIDATOR_PREFIX = "DiffusionParamsValidator_"


class ResolvedParamsError(RuntimeError):
    """A request reached the engine without the front end's resolved parameters."""


def _reject(parameter: str, message: str, value: Any = None) -> None:
    raise VLLMValidationError(message, parameter=parameter, value=value)


def resolve_request(
    sampling_params: Any,
    defaults: Mapping[str, Any],
    *,
    vocab_size: int | None,
) -> DiffusionParams:
    """Parse and check one request; raise ``VLLMValidationError`` naming the field.

    Returns the parameters the request will run with.
    """
    extra = sampling_params.extra_args
    if extra is not None and not isinstance(extra, dict):
        _reject("extra_args", "extra_args must be a JSON object")
    unknown = unknown_params(extra)
    if unknown:
        _reject(
            unknown[0],
            f"Unknown masked-diffusion parameter '{unknown[0]}' in extra_args / "
            f"vllm_xargs; known: {', '.join(PARAM_NAMES)}.",
        )
    try:
        params = parse_params(
            extra, defaults, seed=sampling_params.seed, vocab_size=vocab_size
        )
    except DiffusionParamError as err:
        _reject(err.parameter, str(err))
    max_tokens = sampling_params.max_tokens
    canvas = params.canvas
    if canvas is not None and max_tokens is not None and max_tokens < len(canvas):
        _reject(
            "max_tokens",
            f"max_tokens ({max_tokens}) is smaller than the supplied canvas "
            f"({len(canvas)} tokens); the canvas is the whole answer.",
        )
    if params.scores_likelihood:
        _check_likelihood_request(sampling_params)
    elif sampling_params.logprobs is not None:
        _reject(
            "logprobs",
            "Sample logprobs are not available for masked-diffusion models "
            "(tokens are committed by confidence, not sampled left to right); "
            "prompt_logprobs are, and likelihood requests (likelihood_tokens) "
            "return their estimate as logprobs.",
        )
    if sampling_params.structured_outputs is not None:
        _reject(
            "structured_outputs",
            "Structured outputs are not supported for masked-diffusion models.",
        )
    if sampling_params.logit_bias:
        _reject(
            "logit_bias", "logit_bias is not supported for masked-diffusion models."
        )
    if sampling_params.bad_words:
        _reject("bad_words", "bad_words is not supported for masked-diffusion models.")
    return params


def _check_likelihood_request(sampling_params: Any) -> None:
    """A likelihood request reports through prompt logprobs and emits one
    token (``dynin_vllm.engine.likelihood``)."""
    if sampling_params.prompt_logprobs is None:
        _reject(
            "prompt_logprobs",
            "A likelihood request (likelihood_tokens) returns its estimate as "
            "prompt logprobs: set echo=true with logprobs (completions API) or "
            "prompt_logprobs (SamplingParams).",
        )
    if sampling_params.max_tokens is not None and sampling_params.max_tokens > 1:
        _reject(
            "max_tokens",
            "A likelihood request (likelihood_tokens) scores its prompt and "
            f"generates nothing: max_tokens must be 0 or 1, got "
            f"{sampling_params.max_tokens}.",
        )
    if sampling_params.n != 1:
        _reject(
            "n",
            "A likelihood request (likelihood_tokens) has one estimate; n must "
            "be 1 (use mc_num for more Monte Carlo samples).",
        )


def settle_rendered_request(
    prompt_token_ids: Any,
    sampling_params: Any,
    modalities: Sequence[str] = (),
    max_model_len: int | None = None,
) -> None:
    """The part of the parse that needs the rendered request (the front end
    calls it once the prompt is tokenized and its media processed).

    Checks that need the prompt's length or its media (``VLLMValidationError``
    naming the field), and the request's task: a media request gets its
    task's defaults (``DiffusionParams.for_task``) where neither it nor the
    server set a value. A speech-recognition request that leaves its length
    to the context (``max_tokens`` unset, or the whole room, which is what
    vLLM's transcription endpoint sends) gets upstream's 128 answer slots.
    """
    if len(modalities) > 1:
        _reject(
            "multi_modal_data",
            "one media item per prompt, as Dynin-Omni is trained: send an "
            f"image, a video or an audio clip, not {' and '.join(modalities)}",
        )
    extra = getattr(sampling_params, "extra_args", None) or {}
    wire = extra.get(RESOLVED_KEY)
    if not isinstance(wire, Mapping):
        return
    tokens = wire.get("likelihood_tokens")
    if tokens is not None and prompt_token_ids is not None:
        prompt_len = len(prompt_token_ids)
        if tokens >= prompt_len:
            _reject(
                "likelihood_tokens",
                f"likelihood_tokens ({tokens}) must be smaller than the prompt "
                f"({prompt_len} tokens): the continuation needs a context of at "
                "least one token before it.",
                tokens,
            )
    task = next((m for m in MEDIA_TASKS if m in modalities), None)
    if wire.get("task") in GENERATION_TASKS:
        if modalities and wire["task"] != "image_editing":
            _reject(
                "multi_modal_data",
                f"a {wire['task']} request takes no media input",
            )
        task = wire["task"]
    if task == "audio" and prompt_token_ids is not None:
        room = None if max_model_len is None else max_model_len - len(prompt_token_ids)
        if sampling_params.max_tokens is None or (
            room is not None and sampling_params.max_tokens >= room
        ):
            length = ASR_ANSWER_LENGTH if room is None else min(ASR_ANSWER_LENGTH, room)
            sampling_params.max_tokens = max(1, length)
    if task is not None:
        params = DiffusionParams.from_wire(wire)
        write_resolved(
            sampling_params, params.for_task(task, sampling_params.max_tokens)
        )


def write_resolved(sampling_params: Any, params: DiffusionParams) -> None:
    """Store ``params`` in the request's ``extra_args`` (a new dict: the
    caller's own dict is never modified)."""
    extra = dict(sampling_params.extra_args or {})
    extra[RESOLVED_KEY] = params.to_wire()
    sampling_params.extra_args = extra


def resolved_params(sampling_params: Any) -> DiffusionParams:
    """The parameters the front end resolved for a request (engine side).

    Raises :class:`ResolvedParamsError` when they are missing or malformed:
    that is a bug (a request that bypassed the front end), never a reason to
    fall back to defaults.
    """
    extra = getattr(sampling_params, "extra_args", None) or {}
    if RESOLVED_KEY not in extra:
        raise ResolvedParamsError(
            "request reached the masked-diffusion engine without the parameters "
            "resolved by the front end (did it bypass vLLM's input processor?)"
        )
    try:
        params = DiffusionParams.from_wire(extra[RESOLVED_KEY])
    except (TypeError, ValueError) as err:
        raise ResolvedParamsError(f"malformed resolved parameters: {err}") from err
    # With n > 1, vLLM gives each sample of a parent request its own seed
    # (parent seed + index) after the front end parsed the parent; a seed the
    # request did not set in extra_args follows vLLM's.
    seed = getattr(sampling_params, "seed", None)
    if seed is not None and "seed" not in extra:
        seed = fold_seed(seed)
        if seed != params.seed:
            params = dataclasses.replace(params, seed=seed)
    return params


class DiffusionParamsValidator(LogitsProcessor):
    """Carrier of the front-end parse for vLLM's ``validate_params`` hook.

    Subclasses made by :func:`validator_class` bind one engine's facts.
    """

    defaults: Mapping[str, Any] = {}
    vocab_size: int | None = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        params = resolve_request(
            sampling_params, cls.defaults, vocab_size=cls.vocab_size
        )
        write_resolved(sampling_params, params)

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        raise RuntimeError("DiffusionParamsValidator only validates; never built")

    def apply(self, logits: Any) -> Any:  # pragma: no cover - never built
        return logits

    def is_argmax_invariant(self) -> bool:  # pragma: no cover - never built
        return True

    def update_state(self, batch_update: Any) -> None:  # pragma: no cover
        return None


def _encode(facts: Mapping[str, Any]) -> str:
    raw = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> dict[str, Any]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return json.loads(raw)


def validator_name(defaults: Mapping[str, Any], *, vocab_size: int) -> str:
    """The ``module:Class`` name under which vLLM finds this engine's validator."""
    facts = {"defaults": dict(defaults), "vocab_size": vocab_size}
    return f"{__name__}:{VALIDATOR_PREFIX}{_encode(facts)}"


def is_validator_name(entry: Any) -> bool:
    """Whether a ``logits_processors`` entry is one of our validators."""
    return isinstance(entry, str) and entry.startswith(f"{__name__}:{VALIDATOR_PREFIX}")


@functools.cache
def validator_class(token: str) -> type[DiffusionParamsValidator]:
    facts = _decode(token)
    return type(
        f"{VALIDATOR_PREFIX}{token}",
        (DiffusionParamsValidator,),
        {
            "defaults": dict(facts["defaults"]),
            "vocab_size": facts["vocab_size"],
            "__module__": __name__,
        },
    )


def __getattr__(name: str) -> Any:
    if name.startswith(VALIDATOR_PREFIX):
        return validator_class(name[len(VALIDATOR_PREFIX) :])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
