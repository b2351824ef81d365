"""Classifier-free guidance as a pair of requests.

A request with ``cfg_scale > 0`` needs the logits of an unconditional
sequence (its prompt replaced by the unconditional prompt, its answer region
identical) at every step. That sequence has KV of its own, so the scheduler
adds a hidden companion request for it — the *unconditional branch* — and
schedules the pair together; the runner combines their logits and commits
the same tokens into both. The branch never reaches the client.

When the branch's input never changes (text to speech masks every answer
slot in it), its logits are computed once: the runner caches them from the
first denoising step and reports the request under
:data:`CACHED_UNCOND_ATTR`; the scheduler then finishes the branch, freeing
its KV, and the request goes on alone.

The scheduler's request record holds each request's role. The only other
place the role is written is the branch's ``extra_args``
(:data:`BRANCH_OF_KEY`), which is how the model runner, in another process,
learns that a new request is the branch of another one.
"""

from __future__ import annotations

import copy
import enum
from typing import Any

from dynin_vllm.diffusion.params import INTERNAL_PREFIX

#: ``extra_args`` key of an unconditional branch: the id of its request.
BRANCH_OF_KEY = f"{INTERNAL_PREFIX}cfg_branch_of"

#: Attribute of a step's ``ModelRunnerOutput`` listing the requests whose
#: unconditional logits that step cached (runner to scheduler).
CACHED_UNCOND_ATTR = "dynin_cached_uncond"

#: Suffix making a branch's request id unique (never parsed).
UNCOND_ID_SUFFIX = "::dynin-uncond"


class Role(enum.Enum):
    """A request's part in classifier-free guidance."""

    PLAIN = "plain"  # no guidance
    MAIN = "main"  # guided; has an unconditional branch
    UNCOND = "uncond"  # the hidden unconditional branch of a MAIN request


def branch_of(sampling_params: Any) -> str | None:
    """The request id whose unconditional branch this is, if it is one."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    return extra.get(BRANCH_OF_KEY)


def uncond_id(req_id: str) -> str:
    return f"{req_id}{UNCOND_ID_SUFFIX}"


def uncond_sampling_params(sampling_params: Any, req_id: str) -> Any:
    """Sampling params of the unconditional branch of request ``req_id``."""
    params = copy.deepcopy(sampling_params)
    extra = dict(params.extra_args or {})
    extra[BRANCH_OF_KEY] = req_id
    params.extra_args = extra
    params.prompt_logprobs = None
    params.output_kind = sampling_params.output_kind
    return params


def uncond_prompt(prompt_token_ids: list[int], given: list[int] | None, mask_id: int):
    """The unconditional prompt: the given one, or LLaDA's all-mask prompt."""
    if given:
        return list(given)
    return [mask_id] * len(prompt_token_ids)


def cached_uncond(model_runner_output: Any) -> list[str]:
    """The requests a step reported under :data:`CACHED_UNCOND_ATTR`."""
    return getattr(model_runner_output, CACHED_UNCOND_ATTR, None) or []
