"""Masked-diffusion generation through vLLM's engine, held to the reference.

Every mode that claims exactness must match the pure-torch reference sampler
token for token: ``exact`` against the upstream sampler, ``prefix``, ``dual``
and ``block`` against references with the same cache semantics; alone and
batched.
"""

from __future__ import annotations

import itertools

import pytest

from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.reference.sampler import truncate_at_eos

pytestmark = pytest.mark.engine

MASK = 126336
EOS = 126081
PROMPTS = [
    [126080, 10, 20, 30],
    [126080, 5, 6, 7, 8, 9, 10, 11, 12],
    [126080, *range(200, 240)],
]
MODES = ["exact", "prefix", "dual", "block"]
CONFIGS = {
    "one_token_per_step": dict(max_tokens=16, block_length=8, steps=16),
    "remainder_early": dict(max_tokens=16, block_length=8, steps=6),
    "partial_last_block": dict(max_tokens=12, block_length=5, steps=7),
    "threshold": dict(max_tokens=16, block_length=8, threshold=0.3),
    "factor": dict(max_tokens=16, block_length=8, factor=1.0),
    "temperature": dict(max_tokens=16, block_length=8, steps=8, temperature=0.8),
    "random_remasking": dict(
        max_tokens=16, block_length=8, steps=16, remasking="random"
    ),
    "cfg": dict(max_tokens=16, block_length=8, steps=8, cfg_scale=1.5),
    "fixed_canvas": dict(
        max_tokens=16,
        block_length=8,
        steps=8,
        canvas=[MASK] * 3 + [300] + [MASK] * 5 + [301] + [MASK] * 6,
    ),
}
SEED = 1234


def _cases():
    for (name, config), mode, prompt in itertools.product(
        CONFIGS.items(), MODES, PROMPTS
    ):
        yield f"{name}-{mode}-{len(prompt)}", {**config, "mode": mode}, prompt


def _sampling_params(config: dict, **extra):
    from vllm import SamplingParams

    args = {
        k: v
        for k, v in config.items()
        if k not in ("max_tokens", "temperature") and v is not None
    }
    args["seed"] = SEED
    return SamplingParams(
        max_tokens=config["max_tokens"],
        temperature=config.get("temperature", 0.0),
        extra_args=args,
        **extra,
    )


def _reference(model, config: dict, prompt: list[int]) -> list[int]:
    return reference_generate(
        model,
        prompt,
        gen_length=config["max_tokens"],
        block_length=config["block_length"],
        steps=config.get("steps"),
        temperature=config.get("temperature", 0.0),
        remasking=config.get("remasking", "low_confidence"),
        threshold=config.get("threshold"),
        factor=config.get("factor"),
        cfg_scale=config.get("cfg_scale", 0.0),
        mode=config["mode"],
        seed=SEED,
        canvas=config.get("canvas"),
    ).answer


@pytest.fixture(scope="module")
def llm(dynin_llm):
    return dynin_llm


@pytest.fixture(scope="module")
def expected(reference_model):
    return {
        case_id: _reference(reference_model, config, prompt)
        for case_id, config, prompt in _cases()
    }


def _generate(llm, items):
    requests = [{"prompt_token_ids": prompt} for _, _, prompt in items]
    params = [_sampling_params(config, ignore_eos=True) for _, config, _ in items]
    outputs = llm.generate(requests, params, use_tqdm=False)
    return {
        item[0]: list(out.outputs[0].token_ids)
        for item, out in zip(items, outputs, strict=True)
    }


def test_each_request_alone_matches_reference(llm, expected):
    mismatches = {}
    for case in _cases():
        got = _generate(llm, [case])[case[0]]
        if got != expected[case[0]]:
            mismatches[case[0]] = (got, expected[case[0]])
    assert not mismatches


def test_all_requests_batched_match_reference(llm, expected):
    cases = list(_cases())
    assert len(cases) >= 32
    got = _generate(llm, cases)
    mismatches = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    assert not mismatches


def test_staggered_arrivals_share_steps(llm, expected):
    """Requests joining while others denoise give the same tokens."""
    engine = llm.llm_engine
    cases = list(_cases())[::4]
    pending = list(cases)
    outputs: dict[str, list[int]] = {}
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and steps % 3 == 0:
            case_id, config, prompt = pending.pop(0)
            engine.add_request(
                case_id,
                {"prompt_token_ids": prompt},
                _sampling_params(config, ignore_eos=True),
            )
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
    assert outputs == {case_id: expected[case_id] for case_id, _, _ in cases}


def test_text_ends_at_the_first_eos(llm, reference_model):
    """The upstream EOS fill is trimmed: output stops at the first EOS."""
    canvas = [MASK] * 5 + [EOS] + [MASK] * 10
    config = dict(max_tokens=16, block_length=4, steps=16, canvas=canvas, mode="prefix")
    ref = _reference(reference_model, config, PROMPTS[0])
    out = llm.generate(
        [{"prompt_token_ids": PROMPTS[0]}], _sampling_params(config), use_tqdm=False
    )[0].outputs[0]
    assert list(out.token_ids) == truncate_at_eos(ref, {EOS})
    assert list(out.token_ids)[-1] == EOS and len(out.token_ids) <= 6
    assert out.finish_reason == "stop"


def test_a_canvas_is_the_whole_answer(llm, reference_model):
    """max_tokens beyond the supplied canvas: the answer ends with the canvas."""
    from vllm import SamplingParams

    canvas = [MASK, 500, MASK, MASK, 501, MASK]
    config = dict(max_tokens=6, block_length=4, steps=4, canvas=canvas, mode="exact")
    want = _reference(reference_model, config, PROMPTS[0])
    for cfg_scale in (0.0, 1.0):
        extra = {"block_length": 4, "steps": 4, "canvas": canvas, "mode": "exact"}
        out = llm.generate(
            [{"prompt_token_ids": PROMPTS[0]}],
            SamplingParams(
                max_tokens=40,
                temperature=0,
                ignore_eos=True,
                extra_args={**extra, "cfg_scale": cfg_scale},
            ),
            use_tqdm=False,
        )[0].outputs[0]
        assert len(out.token_ids) == 6
        assert out.finish_reason == "length"
        if not cfg_scale:
            assert list(out.token_ids) == want
        assert [out.token_ids[1], out.token_ids[4]] == [500, 501]


def test_denoising_steps_are_reported_per_request(llm, reference_model):
    config = dict(max_tokens=16, block_length=8, steps=6, mode="exact")
    ref = reference_generate(
        reference_model, PROMPTS[1], gen_length=16, block_length=8, steps=6
    )
    out = llm.generate(
        [{"prompt_token_ids": PROMPTS[1]}],
        _sampling_params(config, ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    metrics = out.spec_decode_metrics.to_dict()
    assert metrics["num_spec_steps"] == ref.nfe == 6
    assert metrics["num_accepted_draft_tokens"] == 16


def test_parallel_samples_get_vllms_per_sample_seeds(llm, reference_model):
    """n > 1: vLLM seeds sample i with ``seed + i``; each sample equals the
    reference with its own seed (before, all n samples were identical)."""
    from vllm import SamplingParams

    config = dict(block_length=8, steps=16, mode="prefix")
    out = llm.generate(
        [{"prompt_token_ids": PROMPTS[0]}],
        SamplingParams(
            n=3,
            max_tokens=16,
            temperature=0.9,
            seed=40,
            ignore_eos=True,
            extra_args=config,
        ),
        use_tqdm=False,
    )[0]
    got = sorted(tuple(o.token_ids) for o in out.outputs)
    want = sorted(
        tuple(
            reference_generate(
                reference_model,
                PROMPTS[0],
                gen_length=16,
                temperature=0.9,
                seed=seed,
                **config,
            ).answer
        )
        for seed in (40, 41, 42)
    )
    assert len(set(want)) == 3
    assert got == want


def test_answer_is_capped_by_the_context_length(llm, reference_model):
    """max_tokens past max_model_len stops at the context limit, as in vLLM."""
    from vllm import SamplingParams

    prompt = [126080, *range(1000, 1500)]  # 501 tokens of 512
    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        SamplingParams(
            max_tokens=64,
            temperature=0,
            ignore_eos=True,
            extra_args={"block_length": 4},
        ),
        use_tqdm=False,
    )[0].outputs[0]
    assert len(out.token_ids) == 11
    assert out.finish_reason == "length"
    ref = reference_generate(reference_model, prompt, gen_length=11, block_length=4)
    assert list(out.token_ids) == ref.answer


def test_prompt_longer_than_context_is_rejected(llm):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="maximum context length"):
        llm.generate(
            [{"prompt_token_ids": [126080] * 600}],
            SamplingParams(max_tokens=4),
            use_tqdm=False,
        )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"block_length": 0}, "block_length"),
        ({"steps": "many"}, "steps"),
        ({"mode": "fast"}, "mode"),
        ({"remasking": "entropy"}, "remasking"),
        ({"threshold": 1.5}, "threshold"),
        ({"factor": -1}, "factor"),
        ({"cfg_scale": -0.5}, "cfg_scale"),
        ({"canvas": [1, 2, 10**7]}, "canvas"),
        ({"blocklength": 8}, "blocklength"),
    ],
)
def test_bad_parameters_are_rejected_by_name(llm, extra, field):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=field) as err:
        llm.generate(
            [{"prompt_token_ids": PROMPTS[0]}],
            SamplingParams(max_tokens=8, extra_args=extra),
            use_tqdm=False,
        )
    assert err.value.parameter == field
    # The engine keeps serving.
    ok = llm.generate(
        [{"prompt_token_ids": PROMPTS[0]}],
        SamplingParams(max_tokens=8, temperature=0),
        use_tqdm=False,
    )
    assert len(ok[0].outputs[0].token_ids) >= 1
