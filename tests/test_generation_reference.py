"""The generation tasks' reference layouts and schedules (dynin.md §4.5-§5.5),
and the engine requests built from them.

The expected numbers come from the research notes, which recorded them by
running upstream's code: the cosine schedule's masks left per step, the layout
lengths, and the unconditional rows.
"""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.multimodal.generation import (
    image_generation_request,
    image_grid,
    speech_generation_request,
    speech_units,
)
from dynin_vllm.reference.media_generation import maskgit_mask_len
from dynin_vllm.reference.prompts import (
    EOI,
    MASK,
    PAD,
    SOA,
    SOI,
    T2I,
    T2S,
    i2i_prompt,
    t2i_prompt,
    t2s_prompt,
)

SPEECH_START = 126464 + 8192


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


def _masks_left(num_slots: int, steps: int) -> list[int]:
    left, out = num_slots, []
    for step in range(steps):
        left = maskgit_mask_len(num_slots, step, steps, left)
        out.append(left)
    return out


def test_cosine_schedule_leaves_upstreams_masks():
    assert _masks_left(1024, 20) == [
        1020, 1011, 995, 973, 946, 912, 873, 828, 778, 724,
        665, 601, 535, 464, 391, 316, 239, 160, 80, 1,
    ]  # fmt: skip
    i2i = _masks_left(441, 64)
    assert i2i[:2] == [440, 439] and i2i[-2:] == [10, 1]


def test_layout_lengths_are_upstreams(tokenizer):
    ids, mask = t2i_prompt(tokenizer, "a cat", 1024)
    assert len(ids) == 1155 and ids[-1026:] == [SOI, *[MASK] * 1024, EOI]
    pads = mask.index(1)
    assert ids[:pads] == [PAD] * pads and ids[pads] == T2I
    uncond, uncond_mask = t2i_prompt(tokenizer, "", 1024)
    assert uncond_mask.index(1) == 126 and uncond[126:129] == [T2I, 126080, 126081]
    source = [126464 + c for c in range(441)]
    ids, mask = i2i_prompt(tokenizer, "make it blue", source, 441)
    assert len(ids) == 1016 and mask[444] == 0 and mask[443] == 1  # middle pads
    ids, mask = t2s_prompt(tokenizer, "Hello.", "Say the given words.", 383)
    assert len(ids) == 1409 and ids[1025] == SOA and ids[1026:] == [MASK] * 383
    assert ids[mask.index(1)] == T2S


def test_long_text_is_cut_to_the_slot_with_eos(tokenizer):
    ids, mask = t2i_prompt(tokenizer, "word " * 400, 16)
    assert all(mask[:129]) and ids[127:129] == [ids[127], 126081]
    request = image_generation_request(tokenizer, "word " * 400, size=64)
    assert request.prompt["prompt_token_ids"] == ids[:130]


def _visible(ids: list[int], mask: list[int]) -> list[int]:
    return [t for t, m in zip(ids, mask, strict=True) if m]


@pytest.mark.parametrize(("size", "masked"), [(128, 64), (336, 383), (512, 383)])
def test_image_request_is_the_layout_without_pads(tokenizer, size, masked):
    request = image_generation_request(tokenizer, "a red cube", size=size)
    rows, cols = image_grid(size)
    ids, mask = t2i_prompt(tokenizer, "a red cube", rows * cols)
    extra = request.sampling_params.extra_args
    prompt = request.prompt["prompt_token_ids"]
    assert prompt + extra["canvas"] == _visible(ids, mask)
    uncond, uncond_mask = t2i_prompt(tokenizer, "", rows * cols)
    assert extra["uncond_prompt_token_ids"] + extra["canvas"] == _visible(
        uncond, uncond_mask
    )
    # Upstream's uncond row: the uncond prompt's first 513 tokens (its text
    # slot, <|soi|> and up to 383 image slots), then the conditional row.
    assert extra["uncond_masked_slots"] == masked
    text_only = image_generation_request(
        tokenizer, "a red cube", size=size, uncond_prefix="text"
    )
    assert text_only.sampling_params.extra_args["uncond_masked_slots"] == 0
    assert extra["allowed_token_ranges"] == [[126464, 126464 + 8192]]
    assert request.sampling_params.max_tokens == rows * cols + 1


def test_speech_request_is_the_layout_without_pads(tokenizer):
    request = speech_generation_request(tokenizer, "Hello.", num_slots=383)
    ids, mask = t2s_prompt(
        tokenizer, "Hello.", "Generate speech for the given text.", 383
    )
    prompt = request.prompt["prompt_token_ids"]
    assert prompt + [MASK] * 383 == _visible(ids, mask)
    extra = request.sampling_params.extra_args
    assert extra["uncond_prompt_token_ids"] == prompt
    assert extra["uncond_masked_slots"] == 383
    assert extra["allowed_token_ranges"] == [
        [SPEECH_START, SPEECH_START + 4096],
        [126098, 126099],
        [126081, 126082],
    ]


def test_speech_units_are_cut_at_the_first_end(tokenizer):
    ids = [SPEECH_START + 5, SPEECH_START + 7, 126098, SPEECH_START + 1]
    assert speech_units(ids, tokenizer) == [5, 7]
    assert speech_units([SPEECH_START + 3, 126081], tokenizer) == [3]
    assert speech_units([SPEECH_START + 3, MASK], tokenizer) == [3]


@pytest.mark.parametrize("size", [0, 100, (64, 40)])
def test_image_sizes_must_be_multiples_of_16(tokenizer, size):
    with pytest.raises(ValueError, match="multiple of 16"):
        image_generation_request(tokenizer, "x", size=size)


def test_masked_left_pads_change_nothing(reference_model, tokenizer):
    """Why the engine may drop the text slot's pads: with them hidden from
    attention, the real positions' logits equal those without them."""
    ids, mask = t2i_prompt(tokenizer, "a cat", 16)
    padded = reference_model.forward(
        torch.tensor([ids]), key_mask=torch.tensor([mask], dtype=torch.bool)
    )[0][0]
    kept = [i for i, m in enumerate(mask) if m]
    dropped = reference_model.forward(torch.tensor([[ids[i] for i in kept]]))[0][0]
    assert torch.allclose(padded[kept], dropped, atol=1e-4, rtol=1e-4)
    # The pads are not harmless unmasked: they are attended then.
    unmasked = reference_model.forward(torch.tensor([ids]))[0][0]
    assert not torch.allclose(unmasked[kept], dropped, atol=1e-4, rtol=1e-4)
