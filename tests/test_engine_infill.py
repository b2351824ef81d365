"""Infilling: mask ids in the prompt are filled as upstream's samplers fill them.

The engine must equal the reference sampler (``infill=True``) token for token:
the answer and the filled prompt, with holes at the start, in the middle and
just before the answer; in ``exact`` and ``prefix``; with fixed steps,
threshold and factor decoding, sampling, and CFG; alone and batched.
"""

from __future__ import annotations

import itertools

import pytest

from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.reference.sampler import truncate_at_eos

pytestmark = pytest.mark.engine

MASK = 126336
EOS = 126081
BOS = 126080
PROMPTS = {
    "start": [BOS, MASK, MASK, 10, 20, 30, 40],
    "middle": [BOS, 5, 6, 7, MASK, 9, MASK, 11, 12, 13],
    "before_answer": [BOS, *range(200, 210), MASK, MASK],
    "everywhere": [BOS, MASK, 50, 51, MASK, 53, 54, MASK],
}
CONFIGS = {
    "fixed_steps": dict(max_tokens=8, block_length=4, steps=8),
    "few_steps": dict(max_tokens=10, block_length=4, steps=5),
    "threshold": dict(max_tokens=8, block_length=4, threshold=0.2),
    "factor": dict(max_tokens=8, block_length=4, factor=1.0),
    "sampled": dict(max_tokens=8, block_length=4, steps=8, temperature=0.7),
}
MODES = ["exact", "prefix", "dual"]
SEED = 77


def _cases():
    for (prompt_name, prompt), (name, config), mode in itertools.product(
        PROMPTS.items(), CONFIGS.items(), MODES
    ):
        yield f"{name}-{mode}-{prompt_name}", {**config, "mode": mode}, prompt
    for prompt_name in ("middle", "everywhere"):
        config = dict(max_tokens=8, block_length=4, steps=8, cfg_scale=1.5)
        yield (
            f"cfg-exact-{prompt_name}",
            {**config, "mode": "exact"},
            PROMPTS[prompt_name],
        )


def _sampling_params(config: dict, **extra):
    from vllm import SamplingParams

    args = {k: v for k, v in config.items() if k not in ("max_tokens", "temperature")}
    return SamplingParams(
        max_tokens=config["max_tokens"],
        temperature=config.get("temperature", 0.0),
        seed=SEED,
        extra_args=args,
        **extra,
    )


def _reference(model, config: dict, prompt: list[int]):
    return reference_generate(
        model,
        prompt,
        gen_length=config["max_tokens"],
        block_length=config["block_length"],
        steps=config.get("steps"),
        temperature=config.get("temperature", 0.0),
        threshold=config.get("threshold"),
        factor=config.get("factor"),
        cfg_scale=config.get("cfg_scale", 0.0),
        mode=config["mode"],
        seed=SEED,
        infill=config.get("infill", True),
    )


@pytest.fixture(scope="module")
def expected(reference_model):
    return {
        case_id: _reference(reference_model, config, prompt)
        for case_id, config, prompt in _cases()
    }


def _generate(llm, cases, **extra):
    outputs = llm.generate(
        [{"prompt_token_ids": prompt} for _, _, prompt in cases],
        [_sampling_params(config, **extra) for _, config, _ in cases],
        use_tqdm=False,
    )
    return {
        case[0]: (list(out.outputs[0].token_ids), list(out.prompt_token_ids))
        for case, out in zip(cases, outputs, strict=True)
    }


def _mismatches(got, expected):
    return {
        case_id: (answer, prompt, expected[case_id].answer, expected[case_id].prompt)
        for case_id, (answer, prompt) in got.items()
        if (answer, prompt) != (expected[case_id].answer, expected[case_id].prompt)
    }


def test_the_reference_fills_the_holes(expected):
    """The cases exercise infilling: with fixed steps the first block fills
    every hole; with threshold and factor decoding most get filled."""
    for case_id, config, prompt in _cases():
        result = expected[case_id]
        holes = [i for i, t in enumerate(prompt) if t == MASK]
        if "steps" in config:
            assert all(result.prompt_after_block[0][i] != MASK for i in holes)
    filled = [r for r in expected.values() if MASK not in r.prompt]
    assert len(filled) >= len(expected) * 3 // 4


def test_each_request_alone_matches_reference(dynin_llm, expected):
    got = {}
    for case in _cases():
        got.update(_generate(dynin_llm, [case], ignore_eos=True))
    assert not _mismatches(got, expected)


def test_all_requests_batched_match_reference(dynin_llm, expected):
    got = _generate(dynin_llm, list(_cases()), ignore_eos=True)
    assert not _mismatches(got, expected)


def test_a_request_ending_at_eos_reports_its_prompt_as_it_stood(
    dynin_llm, reference_model
):
    """A request stops at its first EOS; its holes are as that block left them."""
    cases = [c for c in _cases() if c[1].get("threshold")]
    got = _generate(dynin_llm, cases)
    for case_id, config, prompt in cases:
        ref = _reference(reference_model, config, prompt)
        answer = truncate_at_eos(ref.answer, {EOS})
        block = (len(answer) - 1) // config["block_length"]
        assert got[case_id] == (answer, ref.prompt_after_block[block]), case_id


def test_infill_off_keeps_prompt_masks_fixed(dynin_llm, reference_model):
    cases = [
        (
            f"off-{mode}-{name}",
            {**CONFIGS["fixed_steps"], "mode": mode, "infill": False},
            p,
        )
        for name, p in PROMPTS.items()
        for mode in MODES
    ]
    got = _generate(dynin_llm, cases, ignore_eos=True)
    for case_id, config, prompt in cases:
        ref = _reference(reference_model, config, prompt)
        assert ref.prompt == prompt
        assert got[case_id] == (ref.answer, prompt), case_id


def test_block_mode_keeps_prompt_masks_fixed(dynin_llm, reference_model):
    config = {**CONFIGS["fixed_steps"], "mode": "block"}
    prompt = PROMPTS["middle"]
    got = _generate(dynin_llm, [("block", config, prompt)], ignore_eos=True)
    ref = _reference(reference_model, {**config, "infill": False}, prompt)
    assert got["block"] == (ref.answer, prompt)


def test_filled_prompt_text_offline(dynin_llm, dynin_checkpoint, reference_model):
    """A text prompt comes back with each ``<|mdm_mask|>`` replaced by its fill."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(dynin_checkpoint))
    text = "The capital of<|mdm_mask|> is<|mdm_mask|>."
    ids = tokenizer(text).input_ids
    assert ids.count(MASK) == 2
    config = dict(max_tokens=8, block_length=4, steps=8, mode="exact")
    ref = _reference(reference_model, config, ids)
    out = dynin_llm.generate(
        [text], _sampling_params(config, ignore_eos=True), use_tqdm=False
    )[0]
    assert list(out.prompt_token_ids) == ref.prompt
    fills = [ref.prompt[i] for i, t in enumerate(ids) if t == MASK]
    assert any(f != MASK for f in fills)
    decode = lambda t: tokenizer.decode([t], skip_special_tokens=False)  # noqa: E731
    assert out.prompt == f"The capital of{decode(fills[0])} is{decode(fills[1])}."
