"""Requests of Dynin-Omni's generation tasks, and their outputs as media.

Each builder returns the token prompt and the ``SamplingParams`` of one
request for ``vllm.LLM.generate`` (or the OpenAI endpoints), laid out as
upstream's prompt builders lay them out (``dynin.md`` §4.5-§4.7), with two
changes the engine makes exactly:

- the ``[iPAD]`` pads of the text slot are dropped: they are masked out of
  attention upstream, and rotary positions are relative, so left pads change
  nothing;
- the image or speech slots and anything fixed after them (the closing
  ``<|eoi|>``) are the request's answer canvas, not part of its prompt.

Classifier-free guidance follows upstream. Text to image: the unconditional
prompt is the empty one (or ``negative_prompt``), and by default (``uncond_prefix=
"upstream"``) it keeps upstream's ``resolution + 1 = 513``-token prefix, so its
first 383 image slots stay masked; ``"text"`` shares every image slot
(Show-o's intent, the text slot alone). Text to speech: the same text, with
every speech slot masked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dynin_vllm.multimodal.ids import VocabLayout

BOS, EOS = 126080, 126081
MASK = 126336
PAD = 126093  # [iPAD]
SOI, EOI, SOA = 126084, 126085, 126097
T2I, I2I, T2S = 126088, 126095, 126099
#: Upstream's text slots (``max_seq_length + 1``; TTS ``max_seq_length_text +
#: 1``): longer texts are cut to ``slot - 1`` ids plus EOS, as upstream does.
IMAGE_TEXT_SLOT = 129
SPEECH_TEXT_SLOT = 1025
#: Upstream's unconditional prefixes (``resolution + 1``, with each function's
#: default ``resolution``, whatever the image size) of ``t2i_generate`` and
#: ``i2i_generate``.
T2I_UNCOND_PREFIX = 513
I2I_UNCOND_PREFIX = 337
UNCOND_PREFIXES = ("upstream", "text")
#: MAGVIT-v2 downsamples by 16: one code per 16x16 pixels.
PIXELS_PER_CODE = 16
#: Defaults of upstream's scripts (``validation/speech.py``).
SPEECH_SLOTS = 383
SPEECH_INSTRUCTION = "Generate speech for the given text."


def chat_turn(text: str) -> str:
    """Upstream's single user turn, ending with the assistant header."""
    return (
        "<|start_header_id|>user<|end_header_id|>\n"
        + text
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )


@dataclass(frozen=True)
class GenerationRequest:
    """One request: pass ``prompt`` and ``sampling_params`` to ``LLM.generate``."""

    prompt: dict[str, Any]  # a ``TokensPrompt``
    sampling_params: Any  # ``vllm.SamplingParams``
    task: str
    num_slots: int  # image codes or speech units it generates
    grid: tuple[int, int] | None = None  # image code rows and columns


def _text_slot(task_token: int, ids: Sequence[int], slot: int) -> list[int]:
    ids = list(ids)
    if not ids or ids[0] != BOS:
        ids = [BOS, *ids]
    tokens = [task_token, *ids, EOS]
    return tokens if len(tokens) <= slot else [*tokens[: slot - 1], EOS]


def image_grid(size: int | tuple[int, int]) -> tuple[int, int]:
    """Code rows and columns of a ``size`` (pixels, or ``(width, height)``)."""
    width, height = (size, size) if isinstance(size, int) else size
    for name, value in (("width", width), ("height", height)):
        if value < PIXELS_PER_CODE or value % PIXELS_PER_CODE:
            raise ValueError(
                f"image {name} must be a positive multiple of {PIXELS_PER_CODE}, "
                f"got {value}"
            )
    return height // PIXELS_PER_CODE, width // PIXELS_PER_CODE


def _sampling_params(
    max_tokens: int, temperature: float, seed: int | None, extra: dict[str, Any]
) -> Any:
    from vllm import SamplingParams

    extra = {k: v for k, v in extra.items() if v is not None}
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        ignore_eos=True,
        skip_special_tokens=False,
        detokenize=False,
        extra_args=extra,
    )


def image_generation_request(
    tokenizer: Any,
    prompt: str,
    *,
    size: int | tuple[int, int] = 512,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    uncond_prefix: str = "upstream",
    temperature: float = 1.0,
    seed: int | None = None,
    mode: str | None = None,
    num_previews: int = 0,
) -> GenerationRequest:
    """Text to image (``t2i_generate``): MaskGIT over ``size``'s image codes.

    ``steps`` defaults to 20 and ``guidance_scale`` to 3.5 (the server's
    defaults for the task apply when unset); ``temperature`` scales the
    re-masking noise (candidates are drawn at temperature 1; 0 is greedy).
    ``num_previews``: partial canvases a streaming client receives
    (``dynin_vllm.engine.previews``).
    """
    if uncond_prefix not in UNCOND_PREFIXES:
        raise ValueError(f"uncond_prefix must be one of {UNCOND_PREFIXES}")
    layout = VocabLayout.from_tokenizer(tokenizer)
    rows, cols = image_grid(size)
    slots = rows * cols

    def text_ids(text: str) -> list[int]:
        ids = tokenizer(text, truncation=True, max_length=IMAGE_TEXT_SLOT)["input_ids"]
        return [*_text_slot(T2I, ids, IMAGE_TEXT_SLOT), SOI]

    masked = 0
    if uncond_prefix == "upstream":
        masked = max(0, min(slots, T2I_UNCOND_PREFIX - IMAGE_TEXT_SLOT - 1))
    extra = {
        "task": "image_generation",
        "canvas": [MASK] * slots + [EOI],
        "allowed_token_ranges": [[layout.image_offset, layout.speech_offset]],
        "uncond_prompt_token_ids": text_ids(negative_prompt or ""),
        "uncond_masked_slots": masked,
        "steps": steps,
        "cfg_scale": guidance_scale,
        "mode": mode,
        "num_previews": num_previews or None,
    }
    return GenerationRequest(
        prompt={"prompt_token_ids": text_ids(prompt)},
        sampling_params=_sampling_params(slots + 1, temperature, seed, extra),
        task="image_generation",
        num_slots=slots,
        grid=(rows, cols),
    )


def _fit_slot(ids: list[int], slot: int) -> tuple[list[int], list[int]]:
    """Upstream's text slot: left pads (hidden) or cut to ``slot - 1`` + EOS."""
    if len(ids) <= slot:
        pads = slot - len(ids)
        return [PAD] * pads + ids, [0] * pads + [1] * len(ids)
    return [*ids[: slot - 1], EOS], [1] * slot


def _without_hidden(
    ids: list[int], mask: list[int]
) -> tuple[list[int], tuple[int, int] | None]:
    """The visible tokens, and the ``(index, size)`` position gap the hidden
    run leaves (one contiguous run, as upstream's layouts have)."""
    hidden = [i for i, m in enumerate(mask) if not m]
    if not hidden:
        return list(ids), None
    first, size = hidden[0], len(hidden)
    if hidden != list(range(first, first + size)):
        raise ValueError("the hidden tokens must form one run")
    kept = [t for t, m in zip(ids, mask, strict=True) if m]
    return kept, (first, size) if first > 0 else None


def image_editing_request(
    tokenizer: Any,
    prompt: str,
    source_codes: Sequence[int],
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    mode: str | None = None,
    num_previews: int = 0,
) -> GenerationRequest:
    """Image editing (``i2i_generate`` with upstream's train-time ``i2i_prompt``).

    ``source_codes``: the source image's MAGVIT-v2 codes (a square grid, 441
    at upstream's 336 px); the edited image has the same size. Defaults: 64
    steps, guidance 3.5. The text slot's pads sit in the middle of the
    sequence, hidden from attention upstream; the engine drops them and moves
    the later tokens' rotary positions by as many (``position_gap``). The
    unconditional row is upstream's: its first 337 tokens (``resolution +
    1``) come from the empty-prompt sequence, the rest from the conditional
    one, with the empty prompt's attention mask. ``num_previews`` as for
    :func:`image_generation_request`.
    """
    layout = VocabLayout.from_tokenizer(tokenizer)
    codes = [int(c) for c in source_codes]
    side = math.isqrt(len(codes))
    if not codes or side * side != len(codes):
        raise ValueError("source_codes must be a square grid of codes")
    if any(not 0 <= c < layout.image_codebook_size for c in codes):
        raise ValueError("source codes must lie in the image codebook")
    source = [layout.image_offset + c for c in codes]
    slots = len(codes)
    head = [I2I, SOI, *source, EOI]
    tail = [SOI, *[MASK] * slots, EOI]

    def sequence(text: str) -> tuple[list[int], list[int]]:
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        slot, slot_mask = _fit_slot([BOS, *text_ids, EOS], IMAGE_TEXT_SLOT)
        ids = head + slot + tail
        return ids, [1] * len(head) + slot_mask + [1] * len(tail)

    cond, cond_mask = sequence(prompt)
    empty, empty_mask = sequence("")
    uncond = empty[:I2I_UNCOND_PREFIX] + cond[I2I_UNCOND_PREFIX:]
    prompt_len = len(cond) - slots - 1
    cond_prompt, cond_gap = _without_hidden(cond[:prompt_len], cond_mask[:prompt_len])
    uncond_prompt, uncond_gap = _without_hidden(
        uncond[:prompt_len], empty_mask[:prompt_len]
    )
    extra = {
        "task": "image_editing",
        "canvas": [MASK] * slots + [EOI],
        "allowed_token_ranges": [[layout.image_offset, layout.speech_offset]],
        "uncond_prompt_token_ids": uncond_prompt,
        "uncond_masked_slots": max(0, min(slots, I2I_UNCOND_PREFIX - prompt_len)),
        "position_gap": None if cond_gap is None else list(cond_gap),
        "uncond_position_gap": None if uncond_gap is None else list(uncond_gap),
        "steps": steps,
        "cfg_scale": guidance_scale,
        "mode": mode,
        "num_previews": num_previews or None,
    }
    return GenerationRequest(
        prompt={"prompt_token_ids": cond_prompt},
        sampling_params=_sampling_params(slots + 1, temperature, seed, extra),
        task="image_editing",
        num_slots=slots,
        grid=(side, side),
    )


def speech_generation_request(
    tokenizer: Any,
    text: str,
    *,
    instruction: str = SPEECH_INSTRUCTION,
    num_slots: int = SPEECH_SLOTS,
    steps: int | None = None,
    block_length: int | None = None,
    guidance_scale: float | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    mode: str | None = None,
) -> GenerationRequest:
    """Text to speech (``t2s_generate_mmu_like``) over ``num_slots`` units.

    Defaults (the server's for the task when unset): one step per slot, blocks
    of 128, guidance 2.5. Upstream has no greedy path; ``temperature=0`` is
    this engine's extension (argmax).
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    layout = VocabLayout.from_tokenizer(tokenizer)
    ids = tokenizer(chat_turn(f"{instruction}\n{text}"))["input_ids"]
    prompt = [*_text_slot(T2S, ids, SPEECH_TEXT_SLOT), SOA]
    start = layout.speech_offset
    extra = {
        "task": "speech_generation",
        "allowed_token_ranges": [
            [start, start + layout.speech_codebook_size],
            [layout.eoa_id, layout.eoa_id + 1],
            [layout.eos_id, layout.eos_id + 1],
        ],
        "uncond_prompt_token_ids": prompt,
        "uncond_masked_slots": num_slots,
        "steps": steps,
        "block_length": block_length,
        "cfg_scale": guidance_scale,
        "mode": mode,
    }
    return GenerationRequest(
        prompt={"prompt_token_ids": prompt},
        sampling_params=_sampling_params(num_slots, temperature, seed, extra),
        task="speech_generation",
        num_slots=num_slots,
    )


def image_codes(request: GenerationRequest, token_ids: Sequence[int], tokenizer: Any):
    """The generated image's codes, ``[rows, cols]`` (an output's token ids)."""
    layout = VocabLayout.from_tokenizer(tokenizer)
    ids = torch.as_tensor(list(token_ids)[: request.num_slots], dtype=torch.long)
    if ids.numel() != request.num_slots:
        raise ValueError(
            f"expected {request.num_slots} image ids, got {ids.numel()} "
            "(did the request finish?)"
        )
    codes = layout.ids_to_image_codes(ids)
    return codes.view(*request.grid)


def speech_units(token_ids: Sequence[int], tokenizer: Any) -> list[int]:
    """The generated units, cut at the first ``<|eoa|>``, EOS or other id, as
    upstream cuts them."""
    layout = VocabLayout.from_tokenizer(tokenizer)
    units: list[int] = []
    start, end = (
        layout.speech_offset,
        layout.speech_offset + layout.speech_codebook_size,
    )
    for token in token_ids:
        if not start <= token < end:
            break
        units.append(int(token) - start)
    return units


__all__ = [
    "GenerationRequest",
    "image_codes",
    "image_editing_request",
    "image_generation_request",
    "image_grid",
    "speech_generation_request",
    "speech_units",
]
