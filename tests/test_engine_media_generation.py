"""Text to image and text to speech in the engine equal the reference samplers.

The requests come from ``dynin_vllm.multimodal.generation`` (upstream's layout
without the pads, the canvas as the answer); the references
(``dynin_vllm.reference.media_generation``) run upstream's padded layouts with
key masks and full recomputation, and build the unconditional rows as upstream
does. At temperature 0 in ``exact`` mode the engine must match token for
token: alone, batched with each other and with text, and with guidance on and
off. Short schedules keep float32 rounding from flipping near-ties (dynin.md
§5.3: two implementations agree for about 12 guided steps).
"""

from __future__ import annotations

import random

import pytest

from dynin_vllm.multimodal.generation import (
    image_editing_request,
    image_generation_request,
    speech_generation_request,
)
from dynin_vllm.reference import prompts as layouts
from dynin_vllm.reference.media_generation import (
    I2I_UNCOND_PREFIX,
    T2I_UNCOND_PREFIX,
    maskgit_generate,
    speech_generate,
)
from dynin_vllm.reference.sampler import generate as reference_generate

pytestmark = pytest.mark.engine

PROMPT = "a red cube on a blue sphere"
EDIT = "make the cube blue"


def _source_codes(count: int) -> list[int]:
    """A source image's codes (the codec is tested apart). Random codes: a
    regular pattern makes the tiny model's confidences nearly tie at the
    re-mask cut, where float32 rounding decides (dynin.md §5.3)."""
    rng = random.Random(0)
    return [rng.randrange(8192) for _ in range(count)]


SPEECH_TEXT = "Hello there, how are you?"
TTS_SLOTS, TTS_BLOCK = 24, 8

#: name: (task, builder options). 336 px has 441 image slots, so upstream's
#: uncond prefix masks 383 of them and the branch shows the other 58.
CASES = {
    "t2i-upstream-prefix": ("image", {"size": 336, "steps": 4, "guidance_scale": 3.5}),
    "t2i-text-prefix": (
        "image",
        {"size": 336, "steps": 4, "guidance_scale": 3.5, "uncond_prefix": "text"},
    ),
    "t2i-no-cfg": ("image", {"size": 128, "steps": 6, "guidance_scale": 0.0}),
    # Image editing: a 336 px source (441 codes) and a 64 px one, whose short
    # layout puts upstream's 337-token uncond prefix over the text slot and
    # the first canvas slots.
    "i2i": ("edit", {"side": 21, "steps": 4, "guidance_scale": 3.5}),
    "i2i-small": ("edit", {"side": 4, "steps": 4, "guidance_scale": 3.5}),
    "tts-cfg": ("speech", {"guidance_scale": 2.5}),
    "tts-no-cfg": ("speech", {"guidance_scale": 0.0}),
}


def _request(tokenizer, name: str, **overrides):
    task, options = CASES[name]
    options = {"temperature": 0.0, **options, **overrides}
    if task == "image":
        return image_generation_request(tokenizer, PROMPT, **options)
    if task == "edit":
        side = options.pop("side")
        return image_editing_request(
            tokenizer, EDIT, _source_codes(side * side), **options
        )
    return speech_generation_request(
        tokenizer,
        SPEECH_TEXT,
        num_slots=TTS_SLOTS,
        steps=TTS_SLOTS,
        block_length=TTS_BLOCK,
        **options,
    )


def _reference(model, tokenizer, name: str, on_step=None) -> list[int]:
    """The engine's expected answer: image ids plus ``<|eoi|>``, or the
    speech region (``on_step``: see ``maskgit_generate``)."""
    task, options = CASES[name]
    offset = len(tokenizer)
    if task == "speech":
        ids, mask = layouts.t2s_prompt(
            tokenizer, SPEECH_TEXT, "Generate speech for the given text.", TTS_SLOTS
        )
        region, _ = speech_generate(
            model,
            ids,
            mask,
            speech_start=offset + layouts.IMAGE_CODEBOOK,
            steps=TTS_SLOTS,
            block_length=TTS_BLOCK,
            cfg_scale=options["guidance_scale"],
            temperature=0.0,
        )
        return region
    if task == "edit":
        slots = options["side"] ** 2
        source = [offset + c for c in _source_codes(slots)]
        ids, mask = layouts.i2i_prompt(tokenizer, EDIT, source, slots)
        uncond, uncond_mask = layouts.i2i_prompt(tokenizer, "", source, slots)
        prefix = I2I_UNCOND_PREFIX
    else:
        side = options["size"] // 16
        slots = side * side
        ids, mask = layouts.t2i_prompt(tokenizer, PROMPT, slots)
        uncond, uncond_mask = layouts.t2i_prompt(tokenizer, "", slots)
        prefix = (
            layouts.T2I_TEXT_SLOT
            if options.get("uncond_prefix") == "text"
            else T2I_UNCOND_PREFIX
        )
    codes = maskgit_generate(
        model,
        ids,
        mask,
        num_slots=slots,
        codebook_start=offset,
        steps=options["steps"],
        guidance_scale=options["guidance_scale"],
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        uncond_prefix_len=prefix,
        temperature=0.0,
        on_step=on_step,
    )
    return [offset + c for c in codes] + [layouts.EOI]


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


@pytest.fixture(scope="module")
def expected(reference_model, tokenizer):
    return {name: _reference(reference_model, tokenizer, name) for name in CASES}


@pytest.fixture(scope="module")
def llm(dynin_checkpoint):
    """An engine whose context holds the generation layouts (beside the
    shared 512-token one)."""
    from tests.engine_utils import make_llm, shutdown

    engine = make_llm(dynin_checkpoint, max_model_len=1536)
    yield engine
    shutdown(engine)


def _generate(llm, requests):
    outputs = llm.generate(
        [r.prompt for r in requests],
        [r.sampling_params for r in requests],
        use_tqdm=False,
    )
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.mark.parametrize("name", list(CASES))
def test_each_request_alone_matches_the_reference(llm, tokenizer, expected, name):
    (got,) = _generate(llm, [_request(tokenizer, name)])
    assert got == expected[name]


def test_batched_with_each_other_and_text_matches_the_reference(
    llm, tokenizer, expected, reference_model
):
    from vllm import SamplingParams

    text_prompt = [
        126080,
        *tokenizer(layouts.chat_turn("Tell me a story."))["input_ids"],
    ]
    text = reference_generate(
        reference_model, text_prompt, gen_length=16, block_length=8, mode="exact"
    )
    names = list(CASES)
    requests = [_request(tokenizer, n) for n in names]
    outputs = llm.generate(
        [r.prompt for r in requests] + [{"prompt_token_ids": text_prompt}],
        [r.sampling_params for r in requests]
        + [
            SamplingParams(
                max_tokens=16,
                temperature=0,
                ignore_eos=True,
                extra_args={"block_length": 8, "mode": "exact"},
            )
        ],
        use_tqdm=False,
    )
    for name, out in zip(names, outputs, strict=False):
        assert list(out.outputs[0].token_ids) == expected[name], name
    assert list(outputs[-1].outputs[0].token_ids) == text.answer


def test_image_editing_needs_the_position_gap(llm, tokenizer, expected):
    """The text slot's pads sit mid-sequence: dropped without moving the later
    positions, the edit is not upstream's."""
    request = _request(tokenizer, "i2i")
    request.sampling_params.extra_args.pop("position_gap")
    request.sampling_params.extra_args.pop("uncond_position_gap")
    (got,) = _generate(llm, [request])
    assert got != expected["i2i"]


def test_the_unconditional_prefix_variant_matters(expected):
    # Otherwise the parity above would not tell the two variants apart.
    assert expected["t2i-upstream-prefix"] != expected["t2i-text-prefix"]
    assert expected["tts-cfg"] != expected["tts-no-cfg"]


def test_seeded_sampling_is_the_same_alone_and_batched(llm, tokenizer):
    def sampled(name: str):
        return _request(tokenizer, name, temperature=1.0, seed=1234)

    alone = [
        _generate(llm, [sampled(n)])[0] for n in ("t2i-upstream-prefix", "tts-cfg")
    ]
    batched = _generate(
        llm,
        [
            sampled("t2i-upstream-prefix"),
            _request(tokenizer, "t2i-no-cfg", temperature=1.0, seed=5),
            sampled("tts-cfg"),
            _request(tokenizer, "tts-no-cfg", temperature=1.0, seed=6),
        ],
    )
    assert batched[0] == alone[0] and batched[2] == alone[1]
    other_seed = _generate(
        llm, [_request(tokenizer, "t2i-upstream-prefix", temperature=1.0, seed=99)]
    )[0]
    assert other_seed != alone[0]
    # Sampled image slots hold image codes only; speech slots units or ends.
    assert all(126464 <= t < 126464 + 8192 for t in alone[0][:-1])
    speech = set(range(126464 + 8192, 126464 + 8192 + 4096)) | {126098, 126081}
    assert set(alone[1]) <= speech


def test_the_lm_head_computes_only_the_allowed_columns(llm, tokenizer, expected):
    """Image rows need the 8,192 codebook columns, not the 138,752-wide
    vocabulary, also in a step shared with text rows (which get full rows);
    the parity tests above pass both ways."""

    def work() -> dict[str, int]:
        return llm.collective_rpc("logits_columns")[0]

    before = work()
    (got,) = _generate(llm, [_request(tokenizer, "t2i-no-cfg")])
    assert got == expected["t2i-no-cfg"]
    after = work()
    windowed = after["windowed_rows"] - before["windowed_rows"]
    assert windowed > 0 and after["full_rows"] == before["full_rows"]
    assert after["columns"] - before["columns"] == windowed * 8192
    from vllm import SamplingParams

    _generate_text = llm.generate(
        [
            _request(tokenizer, "t2i-no-cfg").prompt,
            {"prompt_token_ids": [126080, 5, 6]},
        ],
        [
            _request(tokenizer, "t2i-no-cfg").sampling_params,
            SamplingParams(max_tokens=4, temperature=0, extra_args={"mode": "exact"}),
        ],
        use_tqdm=False,
    )
    assert list(_generate_text[0].outputs[0].token_ids) == expected["t2i-no-cfg"]
    # Steps shared with a text request compute full rows for the text only.
    mixed = work()
    assert mixed["full_rows"] > after["full_rows"]
    assert mixed["windowed_rows"] - after["windowed_rows"] == windowed


@pytest.mark.parametrize("name", ["t2i-upstream-prefix", "i2i"])
def test_previews_are_the_reference_steps_predictions(
    llm, tokenizer, expected, reference_model, name
):
    """A streaming request gets the canvas's prediction after each previewed
    step: upstream's step-wise decoding input (every slot filled), here after
    steps 1-3 of 4, and then the same final answer."""
    from vllm.sampling_params import RequestOutputKind

    from dynin_vllm.engine.previews import previews_of

    offset = len(tokenizer)
    predictions: list[list[int]] = []
    _reference(
        reference_model,
        tokenizer,
        name,
        on_step=lambda step, codes: predictions.append(
            [offset + c for c in codes] + [layouts.EOI]
        ),
    )
    request = _request(tokenizer, name, num_previews=3)
    params = request.sampling_params
    params.output_kind = RequestOutputKind.DELTA
    engine = llm.llm_engine
    engine.add_request(f"previews-{name}", request.prompt, params)
    before_answer, tokens, final = [], [], None
    while final is None:
        for output in engine.step():
            tokens += output.outputs[0].token_ids
            if output.finished:
                final = output
            elif not tokens:
                before_answer.append(len(previews_of(output)))
    assert tokens == expected[name]
    assert before_answer == [1, 2, 3]  # one output per previewed step
    # Each output carries every preview so far (a slow consumer's merged
    # outputs lose none); the final one carries them all.
    assert previews_of(final) == predictions[:3]
    assert predictions[0] != predictions[2]


def test_the_speech_branch_is_forwarded_once(llm, tokenizer, expected):
    """Text to speech masks every slot in its unconditional row, whose input so
    never changes: its logits are computed for the whole answer once, at the
    first denoising step, and the branch is then finished. One step per slot
    in blocks of 8 scores 8 + 7 + ... + 1 masked rows per block."""

    def rows() -> int:
        return llm.collective_rpc("logits_columns")[0]["windowed_rows"]

    before = rows()
    (got,) = _generate(llm, [_request(tokenizer, "tts-cfg")])
    assert got == expected["tts-cfg"]
    cond_rows = (TTS_SLOTS // TTS_BLOCK) * sum(range(1, TTS_BLOCK + 1))
    assert rows() - before == cond_rows + TTS_SLOTS  # not 2 * cond_rows
