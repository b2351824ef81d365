"""Sampler formulas against hand-computed cases (no model, no engine).

Each formula is checked twice where both exist: in the reference sampler
(``dynin_vllm.reference.sampler``) and in the engine's torch path
(``dynin_vllm.kernels`` / ``dynin_vllm.diffusion``).
"""

from __future__ import annotations

import math

import pytest
import torch

from dynin_vllm.diffusion.schedule import BlockLayout, transfer_counts
from dynin_vllm.kernels import noise
from dynin_vllm.kernels.scoring import guide, score_rows_torch
from dynin_vllm.kernels.selection import commit_torch, select_torch
from dynin_vllm.reference import sampler as ref


# --- transfer counts -------------------------------------------------------
@pytest.mark.parametrize(
    ("masked", "steps", "expected"),
    [
        (2, 4, [1, 1, 0, 0]),  # upstream's own docstring example
        (10, 4, [3, 3, 2, 2]),  # remainder on the earliest steps
        (8, 8, [1] * 8),
        (7, 3, [3, 2, 2]),
        (0, 3, [0, 0, 0]),
    ],
)
def test_num_transfer_tokens_matches_upstream_rule(masked, steps, expected):
    assert ref.num_transfer_tokens(masked, steps) == expected
    # The engine drops the trailing zero steps (they commit nothing).
    trimmed = list(expected)
    while trimmed and trimmed[-1] == 0:
        trimmed.pop()
    assert transfer_counts(masked, steps) == trimmed


def test_block_layout_with_partial_last_block():
    layout = BlockLayout(answer_len=20, block_length=8, steps=9)
    assert layout.num_blocks == 3
    assert [layout.bounds(b) for b in range(3)] == [(0, 8), (8, 16), (16, 20)]
    assert layout.steps_per_block == 3  # 9 // 3
    # Default: one token per step.
    assert BlockLayout(answer_len=16, block_length=8).steps_per_block == 8


# --- chosen id and confidence ----------------------------------------------
def test_confidence_is_the_softmax_probability_of_the_argmax():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    ids, conf = score_rows_torch(
        logits,
        torch.zeros(1),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
    )
    expected = math.exp(3.0) / sum(math.exp(v) for v in (1.0, 3.0, 2.0, -1.0))
    assert ids.tolist() == [1]
    assert conf.dtype == torch.float64
    # fp32 exponentials summed in float64 on the engine's torch path...
    assert conf.item() == pytest.approx(expected, rel=1e-6)
    exact, _ = score_rows_torch(
        logits.double(),
        torch.zeros(1),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
    )
    assert exact.tolist() == [1]
    # ...and the reference's float64 softmax, as upstream.
    ref_ids, ref_conf = ref._choose(logits, 0.0, 0, 0, [0])
    assert ref_ids == [1] and ref_conf[0] == pytest.approx(expected, rel=1e-15)


def test_gumbel_noise_is_float64_and_follows_llada_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seed = torch.full((3,), 11, dtype=torch.int64)
    step = torch.tensor([0, 1, 2])
    pos = torch.tensor([5, 5, 6])
    u = noise.uniform_rows(seed, noise.GUMBEL, step, pos, 50)
    assert u.dtype == torch.float64
    expected = (logits.double().exp() / (-torch.log(u)) ** 0.7).argmax(-1)
    ids, _ = score_rows_torch(logits, torch.full((3,), 0.7), seed, step, pos)
    assert ids.tolist() == expected.tolist()
    ref_ids, _ = ref._choose(logits, 0.7, 11, 0, [5, 5, 6])
    assert ref_ids[0] == expected[0].item()


def test_temperature_sampling_follows_softmax_over_temperature():
    """Gumbel-max at temperature T draws from softmax(l / T)."""
    logits = torch.tensor([0.0, 1.0, 2.0])
    n = 20000
    ids, _ = score_rows_torch(
        logits.expand(n, 3),
        torch.full((n,), 2.0),
        torch.full((n,), 3, dtype=torch.int64),
        torch.zeros(n, dtype=torch.int64),
        torch.arange(n),
    )
    freq = torch.bincount(ids, minlength=3).double() / n
    target = torch.softmax(logits.double() / 2.0, dim=0)
    assert torch.allclose(freq, target, atol=0.015)


def test_cfg_formulas():
    c = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    s = torch.tensor([3.0], dtype=torch.float64)
    # LLaDA: u + (s + 1)(c - u) = [1 + 4*1, 1 + 4*(-1)] = [5, -3]
    assert guide(c, u, s, "llada").tolist() == [[5.0, -3.0]]
    # MaskGIT: (1 + s)c - s u = [8 - 3, 0 - 3] = [5, -3]
    assert guide(c, u, s, "maskgit").tolist() == [[5.0, -3.0]]


def test_allowed_ranges_restrict_the_choice_and_the_softmax():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0, 4.0]])
    allowed = torch.tensor([[[1, 3], [3, 3]]])  # ids 1..2; second range is padding
    ids, conf = score_rows_torch(
        logits,
        torch.zeros(1),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        allowed=allowed,
    )
    assert ids.tolist() == [2]
    assert conf.item() == pytest.approx(math.exp(2) / (math.exp(1) + math.exp(2)))


# --- selection rules ---------------------------------------------------------
def _select(conf, editable, k=0, threshold=0.0, factor=0.0):
    conf_t = torch.tensor([conf], dtype=torch.float64)
    edit_t = torch.tensor([editable])
    mask = select_torch(
        conf_t,
        edit_t,
        torch.tensor([k]),
        torch.tensor([threshold], dtype=torch.float64),
        torch.tensor([factor], dtype=torch.float64),
    )
    return [j for j, m in enumerate(mask[0].tolist()) if m]


def test_top_k_only_among_editable_positions():
    conf = [0.9, 0.2, 0.8, 0.5]
    editable = [False, True, True, True]
    assert _select(conf, editable, k=2) == [2, 3]
    assert sorted(ref._select(conf, editable, 2, None, None)) == [2, 3]


def test_ties_go_to_the_lower_position():
    conf = [0.5, 0.5, 0.5, 0.1]
    editable = [True] * 4
    assert _select(conf, editable, k=2) == [0, 1]
    assert ref._select(conf, editable, 2, None, None) == [0, 1]


def test_threshold_rule_always_commits_the_best_one():
    editable = [True] * 4
    # Nothing reaches 0.9: only the single best position is committed.
    assert _select([0.3, 0.6, 0.1, 0.2], editable, threshold=0.9) == [1]
    assert ref._select([0.3, 0.6, 0.1, 0.2], editable, None, 0.9, None) == [1]
    # Every position at or above the threshold is committed.
    conf = [0.95, 0.9, 0.89, 0.99]
    assert _select(conf, editable, threshold=0.9) == [0, 1, 3]
    assert sorted(ref._select(conf, editable, None, 0.9, None)) == [0, 1, 3]


@pytest.mark.parametrize(
    ("conf", "factor", "expected"),
    [
        # bars (1-based n): n=1: -1, n=2: 1-1/3=0.667, n=3: 1-1/4=0.75, n=4: 0.8
        ([0.9, 0.7, 0.6, 0.1], 1.0, 2),  # fails at index 2: commit 2
        ([0.9, 0.7, 0.8, 0.79], 1.0, 4),  # fails at the last index: commit all
        ([0.9, 0.7, 0.8, 0.85], 1.0, 4),  # never fails: commit all
        ([0.2, 0.1], 1.0, 2),  # two positions always commit both (quirk)
        ([0.3], 1.0, 1),
        # factor 2: bars [-1, .333, .5, .6, .667]; 0.4 < 0.5 fails at index 2
        ([0.9, 0.5, 0.4, 0.3, 0.2], 2.0, 2),
    ],
)
def test_factor_rule_reproduces_fast_dllm(conf, factor, expected):
    editable = [True] * len(conf)
    got = _select(conf, editable, factor=factor)
    assert len(got) == expected
    order = sorted(range(len(conf)), key=lambda j: -conf[j])
    assert sorted(got) == sorted(order[:expected])
    assert sorted(ref._select(conf, editable, None, None, factor)) == sorted(got)


def test_commit_writes_canvas_and_reports_done():
    mask = 99
    canvas = torch.tensor([[mask, 7, mask, mask], [mask, mask, 1, 2]])
    candidates = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    conf = torch.tensor(
        [[0.1, 0.0, 0.9, 0.5], [0.3, 0.4, 0.0, 0.0]], dtype=torch.float64
    )
    editable = canvas == mask
    committed, done = commit_torch(
        canvas,
        candidates,
        conf,
        editable,
        torch.tensor([2, 2]),
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    )
    assert canvas.tolist() == [[mask, 7, 12, 13], [20, 21, 1, 2]]
    assert committed.tolist() == [2, 2]
    assert done.tolist() == [False, True]


# --- noise ---------------------------------------------------------------------
def test_noise_is_a_pure_function_of_its_counters():
    seed = torch.tensor([1, 1, 2])
    step = torch.tensor([3, 3, 3])
    pos = torch.tensor([4, 4, 4])
    u = noise.uniform_rows(seed, noise.GUMBEL, step, pos, 8)
    assert torch.equal(u[0], u[1])  # same counters, same draws
    assert not torch.equal(u[0], u[2])  # another seed, other draws
    assert ((u > 0) & (u < 1)).all()
    again = noise.uniform_rows(seed[:1], noise.GUMBEL, step[:1], pos[:1], 8)
    assert torch.equal(again[0], u[0])  # independent of batch composition
    other_stream = noise.uniform_rows(seed[:1], noise.REMASK, step[:1], pos[:1], 8)
    assert not torch.equal(other_stream[0], u[0])
