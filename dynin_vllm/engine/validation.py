"""Front-end validation of masked-diffusion requests.

vLLM validates requests in its front end, before they reach the engine core,
and turns errors there into HTTP 400 responses; a bad request that slipped
through to the engine core would instead fail there. The V1 front end runs
the ``validate_params`` hook of the model's logits-processor classes for every
request, so validation rides on a logits-processor class that is never
instantiated (the config hook lists it in ``model_config.logits_processors``;
the worker hides it from the model runner).
"""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor

from dynin_vllm.diffusion.params import (
    DiffusionParamError,
    parse_params,
    unknown_params,
)

#: Model limits of the engine configured in this process (set by the config
#: hook, which runs in the front end).
_limits: dict[str, int] = {}


def set_limits(*, vocab_size: int, max_model_len: int) -> None:
    _limits.update(vocab_size=vocab_size, max_model_len=max_model_len)


def _reject(parameter: str, message: str, value: Any = None) -> None:
    raise VLLMValidationError(message, parameter=parameter, value=value)


def validate_request(sampling_params: Any) -> None:
    """Raise ``VLLMValidationError`` naming the first bad field of a request."""
    extra = sampling_params.extra_args
    if extra is not None and not isinstance(extra, dict):
        _reject("extra_args", "extra_args must be a JSON object")
    unknown = unknown_params(extra)
    if unknown:
        _reject(
            unknown[0],
            f"Unknown masked-diffusion parameter '{unknown[0]}' in extra_args / "
            "vllm_xargs; known: block_length, steps, remasking, threshold, factor, "
            "cfg_scale, mode, seed, canvas, uncond_prompt_token_ids.",
        )
    try:
        params = parse_params(
            extra, seed=sampling_params.seed, vocab_size=_limits.get("vocab_size")
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
    if sampling_params.logprobs is not None:
        _reject(
            "logprobs",
            "Sample logprobs are not available for masked-diffusion models "
            "(tokens are committed by confidence, not sampled left to right); "
            "prompt_logprobs are.",
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


class DiffusionParamsValidator(LogitsProcessor):
    """Carrier of :func:`validate_request` for vLLM's front-end hook."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        validate_request(sampling_params)

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        raise RuntimeError("DiffusionParamsValidator only validates; never built")

    def apply(self, logits: Any) -> Any:  # pragma: no cover - never built
        return logits

    def is_argmax_invariant(self) -> bool:  # pragma: no cover - never built
        return True

    def update_state(self, batch_update: Any) -> None:  # pragma: no cover
        return None
