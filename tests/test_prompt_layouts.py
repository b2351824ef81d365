"""The reference prompt layouts of the understanding tasks (dynin.md §4.2-4.4)."""

from __future__ import annotations

import pytest

from dynin_vllm.reference.prompts import asr_prompt, chat_turn, mmu_prompt


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


def test_special_ids_are_the_tokenizers_reserved_slots(tokenizer):
    assert len(tokenizer) == 126464
    assert tokenizer.convert_tokens_to_ids("<|startoftext|>") == 126080
    # Task tokens sit in LLaDA's reserved slots (use_reserved_token=True).
    assert tokenizer.convert_ids_to_tokens(126089).startswith("<|reserved_token_")


def test_image_prompt_layout(tokenizer):
    codes = [126464 + c for c in (0, 5, 8191)]
    ids = mmu_prompt(tokenizer, codes, "What is this?")
    query = tokenizer(chat_turn("What is this?"))["input_ids"]
    assert ids == [126089, 126084, *codes, 126085, 126080, *query]
    assert tokenizer.decode(ids[6:], skip_special_tokens=False).endswith(
        "What is this?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )


def test_video_prompt_puts_every_frame_in_one_span(tokenizer):
    frames = [[126464 + f * 10 + i for i in range(3)] for f in range(5)]
    flat = [c for frame in frames for c in frame]
    ids = mmu_prompt(tokenizer, flat, "Describe.", video=True)
    assert ids[:2] == [126100, 126084]
    assert ids[2 : 2 + 15] == flat and ids[17:19] == [126085, 126080]
    assert ids.count(126084) == 1 and ids.count(126085) == 1


def test_asr_prompt_layout(tokenizer):
    units = [126464 + 8192 + u for u in (0, 17, 4095)]
    ids = asr_prompt(tokenizer, units, "Transcribe the given audio.")
    query = tokenizer(chat_turn("Transcribe the given audio."))["input_ids"]
    assert ids == [126096, 126097, *units, 126098, *query]
    assert 126080 not in ids  # upstream inserts no BOS here


@pytest.mark.parametrize(
    ("build", "bad"),
    [
        (lambda t, x: mmu_prompt(t, x, "q"), [5]),  # a raw code, not an id
        (lambda t, x: mmu_prompt(t, x, "q"), [126464 + 8192]),  # a speech id
        (lambda t, x: asr_prompt(t, x, "q"), [126464]),  # an image id
        (lambda t, x: asr_prompt(t, x, "q"), []),
    ],
)
def test_media_ids_out_of_range_are_named(tokenizer, build, bad):
    with pytest.raises(ValueError, match="_ids"):
        build(tokenizer, bad)
