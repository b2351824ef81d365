"""Preemption under KV pressure and aborts mid-denoise behave as in vLLM."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from dynin_vllm.reference.likelihood import log_likelihood
from dynin_vllm.reference.media_prompts import (
    image_understanding_prompt,
    speech_recognition_prompt,
)
from dynin_vllm.reference.prompts import chat_turn
from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.testing.media_samples import speech_like
from tests.engine_utils import StatsRecorder, make_llm, shutdown

pytestmark = pytest.mark.engine

SEED = 5
MASK = 126336


def _requests():
    """Requests whose KV grows past the tiny cache once their canvas arrives."""
    base = [126080, *range(300, 319)]  # 20 tokens
    modes = ["prefix", "exact", "dual", "exact", "prefix", "dual", "dual"]
    extras = [
        {},
        {},
        {"threshold": 0.3},
        {"steps": 20},
        {"cfg_scale": 1.0},
        {},
        {"cfg_scale": 1.0, "factor": 1.0},
    ]
    for i, (mode, extra) in enumerate(zip(modes, extras, strict=True)):
        prompt = [*base[:-1], 400 + i]
        if i in (1, 2, 5):  # infill: holes restored when a block restarts
            prompt[3] = prompt[11] = MASK
        config = {"mode": mode, "block_length": 8, "steps": 48, **extra}
        yield f"req{i}", prompt, config


QUESTION = "What is shown?"
#: 0.6 s of audio: about 15 speech units, so its prompt fits the tiny context.
CLIP = speech_like(3, seconds=0.6)
IMAGE = Image.fromarray(
    np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8)
)

#: Likelihood requests queued with them: (prompt, continuation length).
LIKELIHOOD = [([126080, *range(500, 560)], 12), ([126080, *range(600, 650)], 5)]


def _likelihood_params():
    from vllm import SamplingParams

    return [
        SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            seed=SEED,
            extra_args={"likelihood_tokens": n, "mc_num": 16, "mc_batch_size": 8},
        )
        for _, n in LIKELIHOOD
    ]


def likelihood_mismatches(reference_model, outputs) -> list[str]:
    """The :data:`LIKELIHOOD` requests whose estimate is not the reference's."""
    mismatches = []
    for (prompt, n), out in zip(LIKELIHOOD, outputs, strict=True):
        want = log_likelihood(
            reference_model,
            prompt[:-n],
            prompt[-n:],
            mc_num=16,
            batch_size=8,
            seed=SEED,
        )
        got = sum(next(iter(d.values())).logprob for d in out.prompt_logprobs[-n:])
        if got != pytest.approx(want, rel=1e-6):
            mismatches.append(f"likelihood-{n}")
    return mismatches


def _params(config: dict):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=48,
        temperature=0,
        ignore_eos=True,
        extra_args={**config, "seed": SEED},
    )


def _params_with(max_tokens: int, **extra):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0, extra_args=extra)


def test_small_kv_cache_preempts_and_gives_the_same_outputs(
    dynin_checkpoint, reference_model
):
    # 7 blocks of 32 tokens, one of them vLLM's null block: two grown requests
    # (or one CFG pair) fill the cache; six requests are queued.
    llm = make_llm(
        dynin_checkpoint,
        max_model_len=128,
        block_size=32,
        num_gpu_blocks_override=7,
        disable_log_stats=False,
    )
    stats = StatsRecorder(llm)
    try:
        cases = list(_requests())
        outputs = llm.generate(
            [{"prompt_token_ids": prompt} for _, prompt, _ in cases]
            + [{"prompt_token_ids": prompt} for prompt, _ in LIKELIHOOD],
            [_params(config) for _, _, config in cases] + _likelihood_params(),
            use_tqdm=False,
        )
        outputs, scored = outputs[: len(cases)], outputs[len(cases) :]
        # An image and an audio request through the same tiny cache, and a
        # guided image generation, image edit and speech synthesis (CFG pairs;
        # the speech branch is cached after its first step).
        tokenizer = AutoTokenizer.from_pretrained(str(dynin_checkpoint))
        generating = _generation_requests(tokenizer)
        media_config = {"mode": "prefix", "block_length": 8, "steps": 48}
        pictured, heard, *generated = llm.generate(
            [
                {
                    "prompt": chat_turn(QUESTION),
                    "multi_modal_data": {"image": IMAGE},
                    "mm_processor_kwargs": {"image_resolution": 64},
                },
                {
                    "prompt": chat_turn(QUESTION),
                    "multi_modal_data": {"audio": (CLIP, 16000)},
                },
                *[r.prompt for r in generating],
                *[{"prompt_token_ids": prompt} for _, prompt, _ in cases[:3]],
            ],
            [_params(media_config), _params(media_config)]
            + [r.sampling_params for r in generating]
            + [_params(config) for _, _, config in cases[:3]],
            use_tqdm=False,
        )[: 2 + len(generating)]
        assert stats.preemptions > 0
        # A CFG pair that can never fit the cache fails instead of spinning.
        too_big = llm.generate(
            [{"prompt_token_ids": cases[0][1]}],
            _params_with(max_tokens=100, cfg_scale=1.0),
            use_tqdm=False,
        )[0]
        healthy = llm.generate(
            [{"prompt_token_ids": cases[0][1]}], _params(cases[0][2]), use_tqdm=False
        )[0]
    finally:
        shutdown(llm)
    for (name, prompt, config), out in zip(cases, outputs, strict=True):
        want = reference_generate(
            reference_model, prompt, gen_length=48, seed=SEED, infill=True, **config
        )
        assert list(out.outputs[0].token_ids) == want.answer, name
        assert list(out.prompt_token_ids) == want.prompt, name
    assert not likelihood_mismatches(reference_model, scored)
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2

    assert [list(o.outputs[0].token_ids) for o in generated] == (
        _generation_references(reference_model, tokenizer)
    )

    prompt = image_understanding_prompt(
        AutoTokenizer.from_pretrained(str(dynin_checkpoint)),
        load_magvit2(dynin_checkpoint / "magvitv2"),
        IMAGE,
        QUESTION,
        resolution=64,
    )
    want = reference_generate(
        reference_model, prompt, gen_length=48, mode="prefix", block_length=8, steps=48
    )
    assert list(pictured.outputs[0].token_ids) == want.answer
    from dynin_vllm.multimodal.emova import load_emova

    prompt = speech_recognition_prompt(
        AutoTokenizer.from_pretrained(str(dynin_checkpoint)),
        load_emova(dynin_checkpoint / "emova_speech_tokenizer"),
        CLIP,
        QUESTION,
        sample_rate=16000,
    )
    want = reference_generate(
        reference_model, prompt, gen_length=48, mode="prefix", block_length=8, steps=48
    )
    assert list(heard.outputs[0].token_ids) == want.answer
    assert too_big.outputs[0].finish_reason == "error"
    assert list(healthy.outputs[0].token_ids) == list(outputs[0].outputs[0].token_ids)


#: A 64 px source image's codes for the editing request (the codec is tested
#: apart).
EDIT_SOURCE = [(37 * i + 11) % 8192 for i in range(16)]
EDIT = "make it blue"


def _generation_requests(tokenizer):
    from dynin_vllm.multimodal.generation import (
        image_editing_request,
        image_generation_request,
        speech_generation_request,
    )

    return [
        image_generation_request(
            tokenizer, QUESTION, size=64, steps=4, temperature=0.0
        ),
        image_editing_request(tokenizer, EDIT, EDIT_SOURCE, steps=4, temperature=0.0),
        speech_generation_request(
            tokenizer, QUESTION, num_slots=16, block_length=8, temperature=0.0
        ),
    ]


def _generation_references(model, tokenizer) -> list[list[int]]:
    from dynin_vllm.reference import prompts
    from dynin_vllm.reference.media_generation import (
        I2I_UNCOND_PREFIX,
        maskgit_generate,
        speech_generate,
    )

    ids, mask = prompts.t2i_prompt(tokenizer, QUESTION, 16)
    uncond, uncond_mask = prompts.t2i_prompt(tokenizer, "", 16)
    codes = maskgit_generate(
        model,
        ids,
        mask,
        num_slots=16,
        codebook_start=len(tokenizer),
        steps=4,
        guidance_scale=3.5,
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        temperature=0.0,
    )
    source = [len(tokenizer) + c for c in EDIT_SOURCE]
    ids, mask = prompts.i2i_prompt(tokenizer, EDIT, source, 16)
    uncond, uncond_mask = prompts.i2i_prompt(tokenizer, "", source, 16)
    edited = maskgit_generate(
        model,
        ids,
        mask,
        num_slots=16,
        codebook_start=len(tokenizer),
        steps=4,
        guidance_scale=3.5,
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        uncond_prefix_len=I2I_UNCOND_PREFIX,
        temperature=0.0,
    )
    ids, mask = prompts.t2s_prompt(
        tokenizer, QUESTION, "Generate speech for the given text.", 16
    )
    region, _ = speech_generate(
        model,
        ids,
        mask,
        speech_start=len(tokenizer) + prompts.IMAGE_CODEBOOK,
        steps=16,
        block_length=8,
        cfg_scale=2.5,
    )
    return [
        [len(tokenizer) + c for c in codes] + [prompts.EOI],
        [len(tokenizer) + c for c in edited] + [prompts.EOI],
        region,
    ]


def test_abort_mid_denoise_frees_the_kv_cache(dynin_llm):
    from vllm import SamplingParams

    engine = dynin_llm.llm_engine
    stats = StatsRecorder(dynin_llm)
    try:
        for req_id, extra in (("long", {}), ("guided", {"cfg_scale": 2.0})):
            engine.add_request(
                req_id,
                {"prompt_token_ids": [126080, *range(10, 60)]},
                SamplingParams(
                    max_tokens=128,
                    temperature=0,
                    extra_args={"block_length": 64, "steps": 128, **extra},
                ),
            )
        engine.add_request(
            "pictured",
            {
                "prompt": chat_turn(QUESTION),
                "multi_modal_data": {"image": IMAGE},
                "mm_processor_kwargs": {"image_resolution": 64},
            },
            SamplingParams(
                max_tokens=64,
                temperature=0,
                extra_args={"mode": "exact", "block_length": 64, "steps": 64},
            ),
        )
        engine.add_request(
            "heard",
            {
                "prompt": chat_turn(QUESTION),
                "multi_modal_data": {"audio": (CLIP, 16000)},
            },
            SamplingParams(
                max_tokens=64,
                temperature=0,
                extra_args={"mode": "exact", "block_length": 64, "steps": 64},
            ),
        )
        # Guided image generation and speech synthesis (CFG pairs with their
        # hidden unconditional branches), long enough to be mid-denoise.
        from dynin_vllm.multimodal.generation import (
            image_generation_request,
            speech_generation_request,
        )

        tokenizer = AutoTokenizer.from_pretrained(
            dynin_llm.llm_engine.model_config.tokenizer
        )
        for req_id, request in (
            (
                "painted",
                image_generation_request(tokenizer, QUESTION, size=64, steps=32),
            ),
            ("spoken", speech_generation_request(tokenizer, QUESTION, num_slots=48)),
        ):
            engine.add_request(req_id, request.prompt, request.sampling_params)
        for _ in range(4):
            assert not any(out.finished for out in engine.step())
        assert stats.kv_cache_usage[-1] > 0
        engine.abort_request(
            ["long", "guided", "pictured", "heard", "painted", "spoken"]
        )
        # A short request afterwards: its last step reports the usage left over.
        done = dynin_llm.generate(
            [{"prompt_token_ids": [126080, 1, 2]}],
            SamplingParams(max_tokens=4, temperature=0),
            use_tqdm=False,
        )
        assert done[0].finished
        assert not engine.has_unfinished_requests()
        assert stats.kv_cache_usage[-1] == 0
    finally:
        stats.close()
