"""Per-request masked-diffusion parameters: parsing, defaults and validation.

Requests pass these through ``SamplingParams.extra_args`` (``vllm_xargs`` over
HTTP); server-wide defaults come from the checkpoint's
``generation_config.json`` (or ``--override-generation-config``) under the same
names, then from :data:`BUILTIN_DEFAULTS`. The answer length is vLLM's own
``max_tokens`` and the temperature vLLM's own ``temperature``.

============== ====================================================================
name           meaning
============== ====================================================================
block_length   tokens per block; blocks are denoised left to right (semi-AR)
steps          total denoising steps over the answer (upstream ``steps``); each
               block gets ``max(1, steps // num_blocks)``. Default: one token per
               step (``steps = max_tokens``)
remasking      ``low_confidence`` (commit the most confident) or ``random``
threshold      Fast-dLLM parallel decoding: commit every masked position of the
               block with confidence >= threshold, at least one; ignores steps
factor         Fast-dLLM factor rule (``(n+1)(1-c_n) < factor``); ignores steps
cfg_scale      classifier-free guidance scale (0 = off): ``u + (s+1)(c-u)``
mode           ``dual`` (Fast-dLLM DualCache, default: the masked suffix's KV
               is cached too), ``prefix`` (Fast-dLLM prefix cache), ``exact``
               (upstream: recompute everything each step) or ``block`` (write
               each block's KV once, never refresh)
infill         fill the prompt's mask ids as upstream's samplers do (default
               true; a prompt without mask ids is unaffected). ``false`` keeps
               them as fixed tokens. ``block`` mode always keeps them fixed
seed           seed of the counter-based noise (temperature > 0, random remasking)
canvas         initial answer canvas: mask ids mixed with fixed ids (never changed)
uncond_prompt_token_ids  prompt of the unconditional CFG branch (default: the
               prompt with every token replaced by the mask id, as LLaDA does)
task           a generation task: ``image_generation`` (text to image),
               ``image_editing`` or ``speech_generation`` (text to speech); sets
               the sampler and the task's defaults (understanding tasks are set
               from the request's media, never by this parameter)
allowed_token_ranges  ``[[lo, hi], ...]``: the vocabulary ids the answer may
               take (the image codebook, or the speech units with ``<|eoa|>``
               and EOS); logits outside them are never chosen
uncond_masked_slots  leading answer slots that stay the mask id in the
               unconditional CFG branch (upstream's uncond rows: T2I's
               ``resolution + 1`` prefix keeps 383 image slots masked there, TTS
               masks every speech slot)
position_gap   ``[index, size]``: prompt tokens from ``index`` on (and the
               answer) sit ``size`` rotary positions further, as if ``size``
               hidden tokens preceded them (image editing's text-slot pads,
               which upstream masks out of attention in the middle of the
               sequence)
uncond_position_gap  the same for the unconditional CFG branch's prompt
num_previews   MaskGIT tasks: how many times, at evenly spaced steps before
               the last, the engine reports the canvas's current prediction
               (every slot filled, as upstream's step-wise decoding shows it),
               for streaming partial images (``dynin_vllm.engine.previews``)
likelihood_tokens  score instead of generate: the last ``likelihood_tokens``
               prompt tokens are the continuation, whose masked-diffusion
               log-likelihood (LLaDA's Monte Carlo ELBO) is returned as their
               prompt logprobs (``dynin_vllm.diffusion.likelihood``)
mc_num         Monte Carlo rows of a likelihood estimate (default 128, at most
               4096)
mc_batch_size  rows per stratified group (upstream's ``batch_size``; default
               ``min(32, mc_num)``); must divide ``mc_num``
============== ====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

MODES = ("prefix", "exact", "block", "dual")  # append only (stats indices)
REMASKING = ("low_confidence", "random")

#: Fallback defaults when neither the request nor the checkpoint sets a value.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "block_length": 32,
    "steps": None,
    "remasking": "low_confidence",
    "threshold": None,
    "factor": None,
    "cfg_scale": 0.0,
    # As exact as ``prefix`` against its reference, and faster: see
    # benchmarks/README.md.
    "mode": "dual",
    "infill": True,
    "mc_num": 128,
    "mc_batch_size": None,
}

#: The most canvas previews one request may ask for.
MAX_PREVIEWS = 16

#: The most Monte Carlo rows one likelihood request may ask for.
MAX_MC_NUM = 4096

#: Every extra_args key this plugin reads.
PARAM_NAMES = (
    *BUILTIN_DEFAULTS,
    "seed",
    "canvas",
    "uncond_prompt_token_ids",
    "likelihood_tokens",
    "task",
    "allowed_token_ranges",
    "uncond_masked_slots",
    "position_gap",
    "uncond_position_gap",
    "num_previews",
)

#: The decoding rules a request chooses between: a request that sets one of
#: them gets that rule, whatever default the checkpoint sets for the other.
DECODING_RULES = ("threshold", "factor")

#: Tasks a request can belong to (the label of its metrics); a media
#: request's task is its modality (speech recognition is ``audio``).
TASKS = (
    "text",
    "image",
    "video",
    "audio",
    "image_generation",
    "image_editing",
    "speech_generation",
)
MEDIA_TASKS = ("image", "video", "audio")
#: Tasks a request names itself (``task``): those that generate media.
GENERATION_TASKS = ("image_generation", "image_editing", "speech_generation")
#: Tasks denoised with MaskGIT (``dynin.md`` §5.3-§5.4) instead of LLaDA's
#: block-wise low-confidence remasking.
MASKGIT_TASKS = ("image_generation", "image_editing")

#: Upstream's denoising defaults per task (``dynin.md`` §5.2), as functions of
#: the answer length; a value the request or the server sets wins. Image
#: and video understanding (``configs/dynin_omni_demo.yaml``): one block over
#: the whole answer, two tokens per step for images, one for videos. Speech
#: recognition (``validation/speech.py``): blocks of 2 with 4 steps each,
#: which commit [1, 1, 0, 0] tokens; the steps that commit nothing change
#: nothing (at any temperature), so one token per step is the same schedule.
TASK_DEFAULTS: dict[str, Any] = {
    "image": lambda answer: {"block_length": answer, "steps": max(1, answer // 2)},
    "video": lambda answer: {"block_length": answer, "steps": answer},
    "audio": lambda answer: {"block_length": 2, "steps": answer},
    # MaskGIT over the whole canvas (one block), upstream's full recompute;
    # 20 steps and guidance 3.5 for T2I (``configs/dynin_omni_demo.yaml``),
    # 64 steps for I2I (``i2i_generate``'s default, which its script keeps).
    "image_generation": lambda answer: {
        "block_length": answer,
        "steps": 20,
        "cfg_scale": 3.5,
        "mode": "exact",
    },
    "image_editing": lambda answer: {
        "block_length": answer,
        "steps": 64,
        "cfg_scale": 3.5,
        "mode": "exact",
    },
    # ``validation/speech.py``: 383 slots in blocks of 128, one step per slot,
    # guidance 2.5.
    "speech_generation": lambda answer: {
        "block_length": 128,
        "steps": answer,
        "cfg_scale": 2.5,
        "mode": "exact",
    },
}

#: Keys reserved for the engine's own bookkeeping (never set by clients).
INTERNAL_PREFIX = "_dynin_"

#: ``extra_args`` key holding a request's resolved parameters: written by the
#: front end (the one parse), read as they are by the engine.
RESOLVED_KEY = f"{INTERNAL_PREFIX}params"

#: extra_args keys vLLM itself reads.
VLLM_EXTRA_ARGS = ("kv_transfer_params", "ec_transfer_params", "kv_cache_report_mode")


class DiffusionParamError(ValueError):
    """A masked-diffusion request parameter is invalid; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"Invalid diffusion parameter '{parameter}': {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class DiffusionParams:
    """Validated parameters of one request (answer length not included)."""

    block_length: int
    steps: int | None
    remasking: str
    threshold: float | None
    factor: float | None
    cfg_scale: float
    mode: str
    seed: int | None
    canvas: tuple[int, ...] | None
    uncond_prompt_token_ids: tuple[int, ...] | None
    infill: bool = True
    task: str = "text"
    likelihood_tokens: int | None = None
    mc_num: int = 128
    mc_batch_size: int = 32
    allowed_token_ranges: tuple[tuple[int, int], ...] | None = None
    uncond_masked_slots: int = 0
    position_gap: tuple[int, int] | None = None
    uncond_position_gap: tuple[int, int] | None = None
    num_previews: int = 0
    # The names of BUILTIN_DEFAULTS that the request or the server set (a
    # task's own defaults apply to the others).
    explicit: tuple[str, ...] = ()

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 0.0

    @property
    def scores_likelihood(self) -> bool:
        """Whether the request scores its prompt instead of generating."""
        return self.likelihood_tokens is not None

    @property
    def fills_prompt(self) -> bool:
        """Whether the prompt's mask ids are denoised (not in ``block`` mode,
        never by likelihood requests)."""
        return self.infill and self.mode != "block" and not self.scores_likelihood

    @property
    def sampler(self) -> str:
        """``maskgit`` (image generation and editing) or ``llada``."""
        return "maskgit" if self.task in MASKGIT_TASKS else "llada"

    @property
    def dynamic_steps(self) -> bool:
        """Whether the number of steps depends on the confidences."""
        return self.threshold is not None or self.factor is not None

    def to_wire(self) -> dict[str, Any]:
        """The parameters as plain JSON values (what travels in ``extra_args``)."""
        wire = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("canvas", "uncond_prompt_token_ids"):
            if wire[name] is not None:
                wire[name] = list(wire[name])
        wire["explicit"] = list(wire["explicit"])
        if wire["allowed_token_ranges"] is not None:
            wire["allowed_token_ranges"] = [
                list(r) for r in wire["allowed_token_ranges"]
            ]
        for name in ("position_gap", "uncond_position_gap"):
            if wire[name] is not None:
                wire[name] = list(wire[name])
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> DiffusionParams:
        """Rebuild parameters written by :meth:`to_wire`, checking their shape.

        Raises ``ValueError`` when ``wire`` is not exactly such a payload: the
        engine never fills in or guesses a parameter.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(wire, Mapping) or set(wire) != names:
            got = sorted(wire) if isinstance(wire, Mapping) else type(wire).__name__
            raise ValueError(
                f"resolved diffusion parameters must have exactly the keys "
                f"{sorted(names)}; got {got}"
            )
        values = dict(wire)
        for name in ("canvas", "uncond_prompt_token_ids"):
            if values[name] is not None:
                values[name] = tuple(values[name])
        values["explicit"] = tuple(values["explicit"])
        if values["allowed_token_ranges"] is not None:
            values["allowed_token_ranges"] = tuple(
                (int(lo), int(hi)) for lo, hi in values["allowed_token_ranges"]
            )
        for name in ("position_gap", "uncond_position_gap"):
            if values[name] is not None:
                values[name] = tuple(int(v) for v in values[name])
        return cls(**values)

    def for_task(self, task: str, answer_len: int | None) -> DiffusionParams:
        """These parameters for a request of ``task`` with ``answer_len``
        answer slots: the task's defaults where nothing was set explicitly."""
        changes: dict[str, Any] = {"task": task}
        make_defaults = TASK_DEFAULTS.get(task)
        if make_defaults is not None and answer_len and not self.scores_likelihood:
            for name, value in make_defaults(answer_len).items():
                if name not in self.explicit:
                    changes[name] = value
        return replace(self, **changes)


def fold_seed(seed: int) -> int:
    """Any integer seed, folded into the int64 range the noise uses."""
    return (int(seed) + 2**63) % 2**64 - 2**63


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiffusionParamError(name, f"expected an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise DiffusionParamError(name, f"expected an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise DiffusionParamError(name, f"must be >= {minimum}, got {value}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiffusionParamError(name, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise DiffusionParamError(name, f"must be finite, got {value}")
    return value


def _flag(name: str, value: Any) -> bool:
    # vLLM's ``vllm_xargs`` turns JSON true/false into 1/0.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DiffusionParamError(name, f"expected true or false, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DiffusionParamError(
            name, f"must be one of {list(choices)}, got {value!r}"
        )
    return value


def _token_ids(name: str, value: Any, vocab_size: int | None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DiffusionParamError(name, "expected a non-empty list of token ids")
    ids = []
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise DiffusionParamError(name, f"entry {i} is not an integer: {token!r}")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise DiffusionParamError(
                name, f"entry {i} = {token} is outside the vocabulary [0, {vocab_size})"
            )
        ids.append(token)
    return tuple(ids)


def parse_params(
    extra_args: Mapping[str, Any] | None,
    defaults: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    vocab_size: int | None = None,
) -> DiffusionParams:
    """Merge request ``extra_args`` over ``defaults`` and validate the result.

    ``seed`` is vLLM's own ``SamplingParams.seed``; ``extra_args["seed"]`` wins.
    A request that sets ``threshold`` or ``factor`` chooses that decoding rule:
    a default for the other one does not apply to it. Raises
    :class:`DiffusionParamError` naming the first bad parameter.
    """
    request = {
        k: v for k, v in (extra_args or {}).items() if not k.startswith(INTERNAL_PREFIX)
    }
    merged: dict[str, Any] = dict(BUILTIN_DEFAULTS)
    merged.update({k: v for k, v in (defaults or {}).items() if k in BUILTIN_DEFAULTS})
    explicit = tuple(
        sorted(
            k
            for k in BUILTIN_DEFAULTS
            if request.get(k) is not None or (defaults or {}).get(k) is not None
        )
    )
    if any(request.get(rule) is not None for rule in DECODING_RULES):
        for rule in DECODING_RULES:
            merged[rule] = None
    merged.update({k: v for k, v in request.items() if k in PARAM_NAMES})

    threshold = merged["threshold"]
    if threshold is not None:
        threshold = _float("threshold", threshold)
        if not 0.0 < threshold <= 1.0:
            raise DiffusionParamError(
                "threshold", f"must be in (0, 1], got {threshold}"
            )
    factor = merged["factor"]
    if factor is not None:
        factor = _float("factor", factor)
        if factor <= 0.0:
            raise DiffusionParamError("factor", f"must be > 0, got {factor}")
    if threshold is not None and factor is not None:
        raise DiffusionParamError("factor", "cannot be combined with 'threshold'")
    cfg_scale = _float("cfg_scale", merged["cfg_scale"])
    if cfg_scale < 0.0:
        raise DiffusionParamError("cfg_scale", f"must be >= 0, got {cfg_scale}")

    request_seed = request.get("seed", seed)
    if request_seed is not None:
        request_seed = fold_seed(_int("seed", request_seed, -(2**200)))

    canvas = request.get("canvas")
    if canvas is not None:
        canvas = _token_ids("canvas", canvas, vocab_size)
    uncond = request.get("uncond_prompt_token_ids")
    if uncond is not None:
        uncond = _token_ids("uncond_prompt_token_ids", uncond, vocab_size)

    infill = _flag("infill", merged["infill"])
    task = "text"
    if request.get("task") is not None:
        task = _choice("task", request["task"], GENERATION_TASKS)
    ranges = request.get("allowed_token_ranges")
    if ranges is not None:
        ranges = _token_ranges("allowed_token_ranges", ranges, vocab_size)
    uncond_masked = _int(
        "uncond_masked_slots", request.get("uncond_masked_slots", 0), 0
    )
    gaps = {
        name: None if request.get(name) is None else _gap(name, request[name])
        for name in ("position_gap", "uncond_position_gap")
    }
    num_previews = _int("num_previews", request.get("num_previews", 0), 0)
    if num_previews > MAX_PREVIEWS:
        raise DiffusionParamError(
            "num_previews", f"must be in [0, {MAX_PREVIEWS}], got {num_previews}"
        )
    if num_previews and task not in MASKGIT_TASKS:
        raise DiffusionParamError(
            "num_previews", f"only {list(MASKGIT_TASKS)} requests preview their canvas"
        )
    likelihood_tokens, mc_num, mc_batch_size = _likelihood(request, merged)
    if likelihood_tokens is not None and task != "text":
        raise DiffusionParamError("task", "a likelihood request scores text")
    if likelihood_tokens is not None:
        if cfg_scale > 0.0:
            raise DiffusionParamError(
                "cfg_scale", "guidance is not supported for likelihood requests"
            )
        if canvas is not None:
            raise DiffusionParamError(
                "canvas", "a likelihood request scores its prompt; it has no canvas"
            )

    return DiffusionParams(
        block_length=_int("block_length", merged["block_length"], 1),
        steps=None if merged["steps"] is None else _int("steps", merged["steps"], 1),
        remasking=_choice("remasking", merged["remasking"], REMASKING),
        threshold=threshold,
        factor=factor,
        cfg_scale=cfg_scale,
        mode=_choice("mode", merged["mode"], MODES),
        seed=request_seed,
        canvas=canvas,
        uncond_prompt_token_ids=uncond,
        infill=infill,
        likelihood_tokens=likelihood_tokens,
        mc_num=mc_num,
        mc_batch_size=mc_batch_size,
        explicit=explicit,
        task=task,
        allowed_token_ranges=ranges,
        uncond_masked_slots=uncond_masked,
        num_previews=num_previews,
        **gaps,
    )


def _gap(name: str, value: Any) -> tuple[int, int]:
    """``[index, size]``: a prompt index >= 1 and a gap >= 1."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DiffusionParamError(name, f"expected [index, size], got {value!r}")
    return _int(name, value[0], 1), _int(name, value[1], 1)


def _token_ranges(
    name: str, value: Any, vocab_size: int | None
) -> tuple[tuple[int, int], ...]:
    """``[[lo, hi], ...]``: non-empty half-open ranges inside the vocabulary."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DiffusionParamError(name, "expected a non-empty list of [lo, hi] pairs")
    ranges = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
        ):
            raise DiffusionParamError(
                name, f"entry {i} is not an [lo, hi] pair: {pair!r}"
            )
        lo, hi = pair
        top = vocab_size if vocab_size is not None else hi
        if not 0 <= lo < hi <= top:
            raise DiffusionParamError(
                name, f"entry {i} = [{lo}, {hi}) is empty or outside [0, {top})"
            )
        ranges.append((lo, hi))
    return tuple(ranges)


def _likelihood(
    request: Mapping[str, Any], merged: Mapping[str, Any]
) -> tuple[int | None, int, int]:
    """``(likelihood_tokens, mc_num, mc_batch_size)``, checked."""
    tokens = request.get("likelihood_tokens")
    if tokens is not None:
        tokens = _int("likelihood_tokens", tokens, 1)
    mc_num = _int("mc_num", merged["mc_num"], 1)
    if mc_num > MAX_MC_NUM:
        raise DiffusionParamError(
            "mc_num", f"must be in [1, {MAX_MC_NUM}], got {mc_num}"
        )
    group = merged["mc_batch_size"]
    group = min(32, mc_num) if group is None else _int("mc_batch_size", group, 1)
    if mc_num % group:
        raise DiffusionParamError(
            "mc_batch_size",
            f"must divide mc_num ({mc_num}), got {group}",
        )
    return tokens, mc_num, group


def unknown_params(extra_args: Mapping[str, Any] | None) -> list[str]:
    """``extra_args`` keys this plugin does not know (likely typos)."""
    return sorted(
        k
        for k in (extra_args or {})
        if k not in PARAM_NAMES
        and k not in VLLM_EXTRA_ARGS
        and not k.startswith(INTERNAL_PREFIX)
    )
