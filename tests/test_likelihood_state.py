"""The engine's Monte Carlo draws and share bookkeeping (no engine).

``dynin_vllm.diffusion.likelihood`` draws its rows independently of the
reference (``dynin_vllm.reference.likelihood``); they must be the same rows,
and the per-position shares must add up to the reference's estimate.
"""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.diffusion.likelihood import LikelihoodState, group_masks
from dynin_vllm.diffusion.params import DiffusionParamError, parse_params
from dynin_vllm.reference import likelihood as reference

MASK = 126336


@pytest.mark.parametrize(
    ("seed", "length", "group_size"), [(0, 1, 1), (3, 7, 4), (-9, 16, 32), (5, 40, 8)]
)
def test_rows_are_the_references_rows(seed, length, group_size):
    for group in range(3):
        assert torch.equal(
            group_masks(seed, group, length, group_size),
            reference.draw_masks(seed, group, length, group_size),
        )


def test_shares_add_up_to_the_reference_estimate(reference_model):
    context, continuation = [126080, 4, 5, 6], [30, 31, 32, 33, 34]
    prompt = torch.tensor(context + continuation)
    state = LikelihoodState(
        "r", prompt, start=len(context), mc_num=6, group_size=3, seed=2, mask_id=MASK
    )
    while not state.finished:
        row = prompt.clone()
        row[state.start :] = state.row_tokens()
        masked = state.masked_positions()
        assert bool((row[masked] == MASK).all())
        assert int((row == MASK).sum()) == masked.numel()
        log_probs = torch.log_softmax(reference_model.logits(row[None])[0].double(), -1)
        state.add_row(-log_probs[masked, prompt[masked]])
    want = reference.log_likelihood(
        reference_model, context, continuation, mc_num=6, batch_size=3, seed=2
    )
    assert float(state.estimate_shares().sum()) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"likelihood_tokens": 0}, "likelihood_tokens"),
        ({"likelihood_tokens": "3"}, "likelihood_tokens"),
        ({"likelihood_tokens": 2, "mc_num": 0}, "mc_num"),
        ({"likelihood_tokens": 2, "mc_num": 4097}, "mc_num"),
        ({"likelihood_tokens": 2, "mc_num": 12, "mc_batch_size": 5}, "mc_batch_size"),
        ({"likelihood_tokens": 2, "cfg_scale": 0.5}, "cfg_scale"),
        ({"likelihood_tokens": 2, "canvas": [1, 2]}, "canvas"),
    ],
)
def test_bad_likelihood_parameters_are_named(extra, field):
    with pytest.raises(DiffusionParamError) as err:
        parse_params(extra)
    assert err.value.parameter == field


def test_likelihood_defaults_are_llada_evaluations():
    params = parse_params({"likelihood_tokens": 3})
    assert (params.mc_num, params.mc_batch_size) == (128, 32)
    assert parse_params({"likelihood_tokens": 3, "mc_num": 8}).mc_batch_size == 8
    assert params.scores_likelihood and not params.fills_prompt
    assert not parse_params({}).scores_likelihood
