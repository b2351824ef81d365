"""Every engine forward of a request is a denoising step.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
so one ``LLMEngine.step()`` is one engine iteration and a lone request's
forwards can be counted. In every mode a request takes exactly its schedule's
steps: its first forward carries the prompt and the first canvas, and the
block-start refresh of ``prefix`` and ``dual`` is the block's first step.
"""

from __future__ import annotations

import itertools

import pytest

from tests.engine_utils import make_llm, shutdown, temporary_env

pytestmark = pytest.mark.engine

ANSWER, BLOCK = 32, 8


@pytest.fixture(scope="module")
def inprocess_llm(dynin_checkpoint):
    with temporary_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
        llm = make_llm(dynin_checkpoint)
    yield llm
    shutdown(llm)


@pytest.mark.parametrize(
    ("mode", "tokens_per_step"),
    list(itertools.product(("exact", "prefix", "dual", "block"), (1, 2, 4, BLOCK))),
)
def test_forwards_are_the_schedule(inprocess_llm, mode, tokens_per_step):
    from vllm import SamplingParams

    engine = inprocess_llm.llm_engine
    steps = ANSWER // tokens_per_step
    engine.add_request(
        f"{mode}-{tokens_per_step}",
        {"prompt_token_ids": [126080, *range(10, 30)]},
        SamplingParams(
            max_tokens=ANSWER,
            temperature=0,
            ignore_eos=True,
            extra_args={"mode": mode, "block_length": BLOCK, "steps": steps},
        ),
    )
    iterations, finished = 0, None
    while engine.has_unfinished_requests():
        iterations += 1
        finished = next((o for o in engine.step() if o.finished), finished)
    assert finished is not None and len(finished.outputs[0].token_ids) == ANSWER
    denoising = finished.outputs[0].spec_decode_metrics.to_dict()["num_spec_steps"]
    assert denoising == steps
    assert iterations == steps


def test_likelihood_rows_of_concurrent_requests_share_forwards(inprocess_llm):
    """Each Monte Carlo row is one forward of the whole prompt, and the rows
    of concurrent likelihood requests run in the same engine steps: three
    requests of 8 rows take 8 iterations, not 24."""
    from vllm import SamplingParams

    engine = inprocess_llm.llm_engine
    for i, length in enumerate((3, 5, 9)):
        engine.add_request(
            f"likelihood-{i}",
            {"prompt_token_ids": [126080, *range(10, 20), *range(40, 40 + length)]},
            SamplingParams(
                max_tokens=1,
                prompt_logprobs=0,
                extra_args={"likelihood_tokens": length, "mc_num": 8},
            ),
        )
    iterations, finished = 0, []
    while engine.has_unfinished_requests():
        iterations += 1
        finished += [o for o in engine.step() if o.finished]
    assert iterations == 8
    assert len(finished) == 3
    assert all(o.prompt_logprobs is not None for o in finished)


def test_an_image_is_encoded_once_per_request(
    inprocess_llm, dynin_checkpoint, monkeypatch
):
    """``exact`` re-forwards the whole prompt every step; the image's encoder
    output is kept, so MAGVIT-v2 runs once per image, not once per step."""
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from dynin_vllm.model.media_encoders import ImageEncoder
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.multimodal.processor import MEDIA_PLACEHOLDER_ID
    from dynin_vllm.reference.media_prompts import image_understanding_prompt

    calls, codes = [], []
    original = ImageEncoder.codes

    def counting(self, pixel_values):
        calls.append(pixel_values.shape[0])
        result = original(self, pixel_values)
        codes.extend(result.tolist())
        return result

    monkeypatch.setattr(ImageEncoder, "codes", counting)
    rng = np.random.default_rng(7)
    images = [
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        for _ in range(2)
    ]
    outputs = inprocess_llm.generate(
        [
            {
                "prompt": f"Question {i}",
                "multi_modal_data": {"image": image},
                "mm_processor_kwargs": {"image_resolution": 64},
            }
            for i, image in enumerate(images)
        ],
        SamplingParams(
            max_tokens=16,
            temperature=0,
            ignore_eos=True,
            extra_args={"mode": "exact", "block_length": 4, "steps": 16},
        ),
        use_tqdm=False,
    )
    steps = [
        o.outputs[0].spec_decode_metrics.to_dict()["num_spec_steps"] for o in outputs
    ]
    assert steps == [16, 16]
    assert sum(calls) == 2
    # What the engine forwarded: its prompt with each placeholder replaced by
    # the vocabulary id of the code the engine's encoder produced there. It
    # is the layout the reference builds from the image by itself.
    tokenizer = AutoTokenizer.from_pretrained(str(dynin_checkpoint))
    magvit = load_magvit2(dynin_checkpoint / "magvitv2")
    for i, (image, out) in enumerate(zip(images, outputs, strict=True)):
        engine_ids = iter(len(tokenizer) + c for c in codes[i])
        forwarded = [
            next(engine_ids) if t == MEDIA_PLACEHOLDER_ID else t
            for t in out.prompt_token_ids
        ]
        want = image_understanding_prompt(
            tokenizer, magvit, image, f"Question {i}", resolution=64
        )
        span = len(codes[i]) + 4  # task token, SOI, codes, EOI, BOS
        assert forwarded[:span] == want[:span]
        # A completion prompt is the text as given (no chat turn around it).
        assert forwarded[span:] == tokenizer(f"Question {i}").input_ids


def test_aborted_media_requests_release_their_encoder_cache(inprocess_llm):
    """An image and an audio request aborted mid-denoise hold no encoder-cache
    slot afterwards (vLLM keeps the entries only as freeable), and their KV
    blocks are free again."""
    import numpy as np
    from PIL import Image
    from vllm import SamplingParams

    from dynin_vllm.reference.prompts import chat_turn
    from dynin_vllm.testing.media_samples import speech_like

    engine = inprocess_llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    cache = scheduler.encoder_cache_manager
    blocks = scheduler.kv_cache_manager.block_pool
    free_blocks = blocks.get_num_free_blocks()
    image = Image.fromarray(
        np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    )
    params = SamplingParams(
        max_tokens=64,
        temperature=0,
        extra_args={"mode": "exact", "block_length": 64, "steps": 64},
    )
    engine.add_request(
        "pictured",
        {
            "prompt": chat_turn("What is it?"),
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": {"image_resolution": 64},
        },
        params,
    )
    engine.add_request(
        "heard",
        {
            "prompt": chat_turn("Transcribe the given audio."),
            "multi_modal_data": {"audio": (speech_like(30, seconds=0.5), 16000)},
        },
        params,
    )
    for _ in range(3):
        assert not any(out.finished for out in engine.step())
    assert len(cache.request_cached_ids) == 2  # both requests hold entries
    assert cache.num_freeable_slots < cache.cache_size
    assert blocks.get_num_free_blocks() < free_blocks
    engine.abort_request(["pictured", "heard"])
    engine.step()
    assert not cache.request_cached_ids
    assert cache.num_freeable_slots == cache.cache_size
    assert blocks.get_num_free_blocks() == free_blocks
    assert not engine.has_unfinished_requests()


def test_a_canvas_that_does_not_fit_its_step_follows_its_prompt(
    dynin_checkpoint, reference_model
):
    """Two 250-token prompts fill a 512-token step, so their canvases cannot
    join it: those forwards are prompt-only prefills and the canvases follow.
    Every mode still matches its reference (``block`` writes the prompt's KV
    again, with the first canvas)."""
    from vllm import SamplingParams

    from dynin_vllm.reference.sampler import generate

    modes = ("exact", "prefix", "dual", "block")
    prompts = [[126080, *range(1000 + 7 * i, 1249 + 7 * i)] for i in range(4)]
    config = {"block_length": BLOCK, "steps": 4}
    with temporary_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
        llm = make_llm(dynin_checkpoint, max_num_batched_tokens=512)
    try:
        engine = llm.llm_engine
        for mode, prompt in zip(modes, prompts, strict=True):
            engine.add_request(
                mode,
                {"prompt_token_ids": prompt},
                SamplingParams(
                    max_tokens=2 * BLOCK,
                    temperature=0,
                    ignore_eos=True,
                    extra_args={"mode": mode, **config},
                ),
            )
        iterations, answers = 0, {}
        while engine.has_unfinished_requests():
            iterations += 1
            for out in engine.step():
                if out.finished:
                    answers[out.request_id] = list(out.outputs[0].token_ids)
    finally:
        shutdown(llm)
    # 4 steps each, 2 requests per step at most, plus the prompt-only prefills.
    assert iterations > 2 * 4
    for mode, prompt in zip(modes, prompts, strict=True):
        want = generate(
            reference_model, prompt, gen_length=2 * BLOCK, mode=mode, **config
        )
        assert answers[mode] == want.answer, mode
