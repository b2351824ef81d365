"""Request defaults the scheduler and the runner share."""

from __future__ import annotations

from typing import Any

from dynin_vllm.diffusion.params import BUILTIN_DEFAULTS


def generation_defaults(model_config: Any) -> dict[str, Any]:
    """Diffusion defaults from ``generation_config.json`` and overrides."""
    config = dict(model_config.try_get_generation_config() or {})
    config.update(model_config.override_generation_config or {})
    return {k: v for k, v in config.items() if k in BUILTIN_DEFAULTS and v is not None}


def answer_length(sampling_params: Any, prompt_len: int, max_model_len: int) -> int:
    """Answer slots of a request: ``max_tokens`` capped by the context length."""
    room = max_model_len - prompt_len
    max_tokens = sampling_params.max_tokens
    return room if max_tokens is None else max(1, min(max_tokens, room))
