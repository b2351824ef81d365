"""The reference Monte Carlo ELBO (LLaDA's loglikelihood estimator)."""

from __future__ import annotations

import statistics

import pytest
import torch

from dynin_vllm.reference.likelihood import draw_masks, log_likelihood, masked_counts

MASK = 126336
CONTEXT = [126080, 11, 12, 13, 14]


def test_masked_counts_are_upstreams_stratified_counts():
    # linspace(3, 10.5, 4) = [3, 5.5, 8, 10.5], rounded half to even.
    assert masked_counts(3, 10, 4) == [3, 6, 8, 10]
    # Wrapping past L starts again at 1.
    assert masked_counts(9, 10, 4) == [9, 2, 4, 6]
    assert masked_counts(1, 1, 8) == [1] * 8


def test_each_row_masks_its_count_and_draws_are_reproducible():
    masks = draw_masks(seed=5, batch=0, length=12, batch_size=6)
    counts = masks.sum(1).tolist()
    k = counts[0]
    assert counts == masked_counts(k, 12, 6)
    assert torch.equal(masks, draw_masks(seed=5, batch=0, length=12, batch_size=6))
    assert not torch.equal(masks, draw_masks(seed=5, batch=1, length=12, batch_size=6))
    assert not torch.equal(masks, draw_masks(seed=6, batch=0, length=12, batch_size=6))


def test_a_one_token_continuation_is_scored_exactly(reference_model):
    """With one token the only masking ratio is 1: the ELBO is log p itself."""
    target = 77
    logits = reference_model.logits(torch.tensor([[*CONTEXT, MASK]]))[0, -1]
    exact = float(torch.log_softmax(logits.double(), -1)[target])
    got = log_likelihood(reference_model, CONTEXT, [target], mc_num=4, batch_size=2)
    assert got == pytest.approx(exact, abs=1e-9)


def test_the_spread_over_seeds_shrinks_as_samples_grow(reference_model):
    continuation = [21, 22, 23, 24, 25, 26, 27, 28]

    def spread(mc_num: int) -> float:
        estimates = [
            log_likelihood(
                reference_model,
                CONTEXT,
                continuation,
                mc_num=mc_num,
                batch_size=4,
                seed=seed,
            )
            for seed in range(8)
        ]
        return statistics.pstdev(estimates)

    small, large = spread(4), spread(64)
    assert large < small / 2, (small, large)


def test_guidance_changes_the_estimate(reference_model):
    plain = log_likelihood(reference_model, CONTEXT, [21, 22], mc_num=4, batch_size=4)
    guided = log_likelihood(
        reference_model, CONTEXT, [21, 22], mc_num=4, batch_size=4, cfg_scale=1.0
    )
    assert plain != guided


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"continuation": []}, "continuation"),
        ({"mc_num": 6, "batch_size": 4}, "mc_num"),
        ({"mc_num": 0}, "mc_num"),
    ],
)
def test_bad_arguments_are_named(reference_model, kwargs, message):
    args = {"continuation": [1], "mc_num": 4, "batch_size": 2, **kwargs}
    continuation = args.pop("continuation")
    with pytest.raises(ValueError, match=message):
        log_likelihood(reference_model, CONTEXT, continuation, **args)
