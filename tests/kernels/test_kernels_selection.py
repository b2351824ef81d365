"""The Triton and numpy selection/commit against ``commit_torch``: identical,
ties included."""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.kernels.selection import commit_numpy, commit_torch

MASK = 99


@pytest.fixture(params=["triton", "numpy"])
def commit(request, ops):
    """The implementation under test: the Triton kernel or the numpy twin."""
    return ops.commit_triton if request.param == "triton" else commit_numpy


def _case(rows: int, width: int, seed: int, conf_dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    canvas = torch.randint(0, 50, (rows, width), generator=gen)
    editable = torch.rand(rows, width, generator=gen) < 0.6
    editable[0] = True  # all masked
    if rows > 1:
        editable[1] = False  # nothing masked
    canvas[editable] = MASK
    candidates = torch.randint(0, 50, (rows, width), generator=gen)
    # A few distinct values: many exact ties; negative ones for the factor rule.
    levels = torch.tensor([-2.0, 0.05, 0.5, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0])
    confidence = levels[torch.randint(0, len(levels), (rows, width), generator=gen)]
    confidence[editable & (torch.rand(rows, width, generator=gen) < 0.1)] = -torch.inf
    confidence = confidence.to(conf_dtype)
    num_transfer = torch.randint(0, width + 3, (rows,), generator=gen)
    threshold = torch.where(
        torch.rand(rows, generator=gen) < 0.4,
        torch.rand(rows, generator=gen),
        torch.zeros(rows),
    ).double()
    factor = torch.where(
        torch.rand(rows, generator=gen) < 0.4,
        2 * torch.rand(rows, generator=gen),
        torch.zeros(rows),
    ).double()
    return canvas, candidates, confidence, editable, num_transfer, threshold, factor


def _check(commit, canvas, *args) -> None:
    ours = canvas.clone()
    theirs = canvas.clone()
    got = commit(ours, *args)
    want = commit_torch(theirs, *args)
    assert torch.equal(ours, theirs)
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize(
    ("rows", "width", "seed"),
    [(3, 1, 0), (6, 5, 1), (9, 32, 2), (5, 70, 3), (4, 130, 4)],
)
def test_commit_matches_reference(commit, rows, width, seed) -> None:
    _check(commit, *_case(rows, width, seed))


def test_float32_confidences(commit) -> None:
    _check(commit, *_case(6, 45, 7, conf_dtype=torch.float32))


@pytest.mark.parametrize("rule", ["topk", "threshold", "factor"])
def test_each_rule_with_ties(commit, rule) -> None:
    """All three rules, one at a time, on rows full of equal confidences."""
    canvas, cand, conf, edit, k, thr, fac = _case(8, 67, 11)
    conf = torch.where(torch.arange(67) % 3 == 0, 0.5, conf)  # more ties
    zero = torch.zeros(8, dtype=torch.float64)
    if rule == "topk":
        thr, fac = zero, zero
    elif rule == "threshold":
        thr, fac = torch.linspace(0.1, 1.0, 8, dtype=torch.float64), zero
    else:
        fac = torch.linspace(0.1, 3.0, 8, dtype=torch.float64)
    _check(commit, canvas, cand, conf, edit, k, thr, fac)


def test_hand_checked_ties_go_to_the_lower_position(commit) -> None:
    canvas = torch.full((1, 6), MASK)
    cand = torch.arange(10, 16)[None]
    conf = torch.tensor([[0.3, 0.9, 0.5, 0.9, 0.9, 0.1]], dtype=torch.float64)
    edit = torch.ones(1, 6, dtype=torch.bool)
    edit[0, 1] = False
    canvas[0, 1] = 7
    k = torch.tensor([2])
    zero = torch.zeros(1, dtype=torch.float64)
    count, done = commit(canvas, cand, conf, edit, k, zero, zero)
    assert canvas.tolist() == [[MASK, 7, MASK, 13, 14, MASK]]
    assert count.tolist() == [2] and done.tolist() == [False]


def test_non_contiguous_canvas_is_written_in_place(commit) -> None:
    canvas, cand, conf, edit, k, thr, fac = _case(4, 20, 5)
    big = torch.zeros(4, 40, dtype=torch.int64)
    view = big[:, ::2]
    view.copy_(canvas)
    want = canvas.clone()
    commit_torch(want, cand, conf, edit, k, thr, fac)
    commit(view, cand, conf, edit, k, thr, fac)
    assert torch.equal(view, want)


def test_empty_batch(commit) -> None:
    args = _case(2, 4, 0)
    empty = [a[:0] for a in args]
    got = commit(*empty)
    want = commit_torch(*[a.clone() for a in empty])
    assert got[0].shape == want[0].shape == (0,)
    assert got[1].shape == want[1].shape == (0,)


@pytest.mark.parametrize(
    ("conf", "want"),
    [
        # bars 1 - 1/(i+2): -1 (best), 0.667, 0.75, 0.8
        ([0.99, 0.98, 0.10], 3),  # fails at the last index: all (upstream quirk)
        ([0.40, 0.99, 0.50, 0.30], 1),  # fails at sorted index 1
        ([0.99, 0.98, 0.97, 0.10], 4),  # fails at the last index again
        ([0.99, 0.98, 0.70, 0.60], 2),  # fails at sorted index 2 of 4
        ([0.99, 0.98, 0.97, 0.96], 4),  # never fails
        ([-3.0, -4.0], 0),  # fails at index 0 (below the bar -1): nothing
        ([-3.0], 1),  # fails at index 0, which is the last: all
    ],
)
def test_factor_rule_by_hand(commit, conf, want) -> None:
    width = len(conf)
    canvas = torch.full((1, width), MASK)
    args = (
        torch.arange(width)[None],
        torch.tensor([conf], dtype=torch.float64),
        torch.ones(1, width, dtype=torch.bool),
        torch.tensor([1]),
        torch.zeros(1, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),  # factor 1
    )
    ref = canvas.clone()
    assert commit_torch(ref, *args)[0].item() == want
    count, _ = commit(canvas, *args)
    assert count.item() == want and torch.equal(canvas, ref)
