"""Classifier-free guidance as a pair of requests.

A request with ``cfg_scale > 0`` needs the logits of an unconditional
sequence (its prompt replaced by the unconditional prompt, its answer region
identical) at every step. That sequence has KV of its own, so the scheduler
adds a hidden companion request for it — the *unconditional branch* — and
schedules the pair together; the runner combines their logits and commits
the same tokens into both. The branch never reaches the client.
"""

from __future__ import annotations

import copy
import enum
from typing import Any

from dynin_vllm.diffusion.params import INTERNAL_PREFIX

ROLE_KEY = f"{INTERNAL_PREFIX}cfg_role"
PARTNER_KEY = f"{INTERNAL_PREFIX}cfg_partner"
UNCOND_SUFFIX = "::dynin-uncond"


class Role(enum.Enum):
    MAIN = "main"
    UNCOND = "uncond"


MAIN = Role.MAIN
UNCOND = Role.UNCOND


def _extra(sampling_params: Any) -> dict:
    return getattr(sampling_params, "extra_args", None) or {}


def branch_role(sampling_params: Any) -> Role | None:
    role = _extra(sampling_params).get(ROLE_KEY)
    return Role(role) if role is not None else None


def is_uncond(sampling_params: Any) -> bool:
    return branch_role(sampling_params) is UNCOND


def partner_of(sampling_params: Any) -> str | None:
    return _extra(sampling_params).get(PARTNER_KEY)


def uncond_id(req_id: str) -> str:
    return f"{req_id}{UNCOND_SUFFIX}"


def mark_main(sampling_params: Any, req_id: str) -> None:
    """Tag a guided request with its branch's id (in place)."""
    extra = dict(_extra(sampling_params))
    extra.update({ROLE_KEY: MAIN.value, PARTNER_KEY: uncond_id(req_id)})
    sampling_params.extra_args = extra


def uncond_sampling_params(sampling_params: Any, req_id: str) -> Any:
    """Sampling params of the unconditional branch of request ``req_id``."""
    params = copy.deepcopy(sampling_params)
    extra = dict(_extra(params))
    extra.update({ROLE_KEY: UNCOND.value, PARTNER_KEY: req_id})
    params.extra_args = extra
    params.prompt_logprobs = None
    params.output_kind = sampling_params.output_kind
    return params


def uncond_prompt(prompt_token_ids: list[int], given: list[int] | None, mask_id: int):
    """The unconditional prompt: the given one, or LLaDA's all-mask prompt."""
    if given:
        return list(given)
    return [mask_id] * len(prompt_token_ids)
