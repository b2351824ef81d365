"""Likelihood requests: the engine's Monte Carlo ELBO equals the reference's.

A request with ``likelihood_tokens`` scores the end of its prompt and reports
each continuation position's share of the estimate as its prompt logprob;
the shares must add up to ``dynin_vllm.reference.likelihood`` for the same
seed (up to float32 logits), alone, batched with each other and with
generation requests. Bad requests are refused naming the field.
"""

from __future__ import annotations

import pytest

from dynin_vllm.reference.likelihood import log_likelihood
from dynin_vllm.reference.sampler import generate as reference_generate

pytestmark = pytest.mark.engine

BOS, EOS, MASK = 126080, 126081, 126336

#: name: (context, continuation, mc_num, mc_batch_size, seed)
CASES = {
    "one_token": ([BOS, 5, 6, 7], [8], 4, 4, 1),
    "four_tokens": ([BOS, *range(20, 30)], [40, 41, 42, 43], 8, 4, 2),
    "masked_context": ([BOS, 9, MASK, 11, 12], [50, 51, 52, 53, 54, 55, 56], 6, 3, 3),
    "default_group": ([BOS, *range(60, 100)], [7, 8, 9], 32, None, 4),
}


def _params(continuation, mc_num, group, seed, **extra):
    from vllm import SamplingParams

    args = {"likelihood_tokens": len(continuation), "mc_num": mc_num}
    if group is not None:
        args["mc_batch_size"] = group
    return SamplingParams(
        max_tokens=1, prompt_logprobs=1, seed=seed, extra_args=args, **extra
    )


def _score(output, context_len: int) -> float:
    values = [next(iter(d.values())).logprob for d in output.prompt_logprobs[1:]]
    assert values[: context_len - 1] == [0.0] * (context_len - 1)
    return sum(values[context_len - 1 :])


@pytest.fixture(scope="module")
def expected(reference_model):
    return {
        name: log_likelihood(
            reference_model,
            context,
            continuation,
            mc_num=mc_num,
            batch_size=group or min(32, mc_num),
            seed=seed,
        )
        for name, (context, continuation, mc_num, group, seed) in CASES.items()
    }


def _run(llm, names, extra_prompts=(), extra_params=()):
    prompts = [{"prompt_token_ids": CASES[n][0] + CASES[n][1]} for n in names]
    params = [_params(*CASES[n][1:]) for n in names]
    return llm.generate(
        [*prompts, *extra_prompts], [*params, *extra_params], use_tqdm=False
    )


def test_each_request_alone_matches_the_reference(dynin_llm, expected):
    for name in CASES:
        (out,) = _run(dynin_llm, [name])
        assert _score(out, len(CASES[name][0])) == pytest.approx(
            expected[name], rel=1e-6
        ), name
        assert list(out.outputs[0].token_ids) == [EOS]


def test_batched_with_each_other_and_with_generation(
    dynin_llm, expected, reference_model
):
    text_prompt = [BOS, *range(300, 310)]
    text = {"mode": "exact", "block_length": 4, "steps": 8}
    from vllm import SamplingParams

    outputs = _run(
        dynin_llm,
        list(CASES),
        [{"prompt_token_ids": text_prompt}],
        [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, extra_args=text)],
    )
    for name, out in zip(CASES, outputs, strict=False):
        assert _score(out, len(CASES[name][0])) == pytest.approx(
            expected[name], rel=1e-6
        ), name
    want = reference_generate(reference_model, text_prompt, gen_length=8, **text)
    assert list(outputs[-1].outputs[0].token_ids) == want.answer


def test_the_estimate_follows_the_seed(dynin_llm):
    context, continuation, mc_num, group, _ = CASES["four_tokens"]
    scores = [
        _score(_run_one(dynin_llm, context, continuation, mc_num, group, seed), 11)
        for seed in (7, 7, 8)
    ]
    assert scores[0] == scores[1]
    assert scores[0] != scores[2]


def _run_one(llm, context, continuation, mc_num, group, seed):
    return llm.generate(
        [{"prompt_token_ids": context + continuation}],
        _params(continuation, mc_num, group, seed),
        use_tqdm=False,
    )[0]


def test_one_token_continuations_are_exact_log_probabilities(
    dynin_llm, reference_model
):
    """With one continuation token every row masks it: the estimate is the
    exact log-probability whatever the seed."""
    import torch

    context = [BOS, 5, 6, 7]
    logits = reference_model.logits(torch.tensor([[*context, MASK]]))[0, -1]
    want = float(torch.log_softmax(logits.double(), -1)[8])
    for seed in (1, 2):
        out = _run_one(dynin_llm, context, [8], 2, 2, seed)
        assert _score(out, len(context)) == pytest.approx(want, rel=1e-6)


def test_sample_logprobs_report_the_emitted_token(dynin_llm):
    context, continuation, *_ = CASES["one_token"]
    out = dynin_llm.generate(
        [{"prompt_token_ids": context + continuation}],
        _params(continuation, 2, 2, 0, logprobs=1),
        use_tqdm=False,
    )[0]
    (entry,) = out.outputs[0].logprobs
    assert list(entry) == [EOS]
    assert entry[EOS].logprob == 0.0
    # Every prompt entry holds only its own token, ranked first.
    for token, logprobs in zip(
        out.prompt_token_ids[1:], out.prompt_logprobs[1:], strict=True
    ):
        assert list(logprobs) == [token]
        assert logprobs[token].rank == 1


@pytest.mark.parametrize(
    ("extra", "kwargs", "field"),
    [
        ({"likelihood_tokens": 0}, {}, "likelihood_tokens"),
        ({"likelihood_tokens": 5}, {}, "likelihood_tokens"),  # the whole prompt
        ({"likelihood_tokens": 2, "mc_num": 0}, {}, "mc_num"),
        ({"likelihood_tokens": 2, "mc_num": 5000}, {}, "mc_num"),
        (
            {"likelihood_tokens": 2, "mc_num": 8, "mc_batch_size": 3},
            {},
            "mc_batch_size",
        ),
        ({"likelihood_tokens": 2, "cfg_scale": 1.0}, {}, "cfg_scale"),
        ({"likelihood_tokens": 2}, {"max_tokens": 4}, "max_tokens"),
        ({"likelihood_tokens": 2}, {"prompt_logprobs": None}, "prompt_logprobs"),
        ({"likelihood_tokens": 2}, {"n": 2}, "n"),
        ({}, {"logprobs": 1}, "logprobs"),
    ],
)
def test_bad_likelihood_requests_name_the_field(dynin_llm, extra, kwargs, field):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    args = {"max_tokens": 1, "prompt_logprobs": 1, **kwargs}
    with pytest.raises(VLLMValidationError) as err:
        dynin_llm.generate(
            [{"prompt_token_ids": [BOS, 1, 2, 3, 4]}],
            SamplingParams(extra_args=extra, **args),
            use_tqdm=False,
        )
    assert err.value.parameter == field
    # The engine goes on serving.
    (out,) = _run(dynin_llm, ["one_token"])
    assert list(out.outputs[0].token_ids) == [EOS]
