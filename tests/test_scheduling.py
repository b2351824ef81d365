"""The scheduler's pure rules: whole fits, CFG pairing, order and commit counts."""

from __future__ import annotations

from dynin_vllm.engine.scheduling import (
    Candidate,
    broken_pairs,
    committed_in_step,
    restore_order,
    sit_out,
)

M = 9  # mask id in these tests


def test_requests_run_whole_or_sit_out_in_priority_order():
    running = [Candidate("a", 6), Candidate("b", 5), Candidate("c", 4)]
    # a fits (4 left), b does not, c does: a partial canvas never runs.
    assert sit_out(running, budget=10) == {"b"}
    assert sit_out(running, budget=15) == set()
    assert sit_out(running, budget=3) == {"a", "b", "c"}


def test_a_cfg_pair_fits_as_one_unit():
    running = [
        Candidate("m", 4, partner="u"),
        Candidate("x", 3),
        Candidate("u", 4, partner="m"),
    ]
    assert sit_out(running, budget=8) == {"x"}  # the pair takes 8 first
    assert sit_out(running, budget=7) == {"m", "u"}  # neither half alone
    assert sit_out(running, budget=11) == set()


def test_half_of_a_pair_without_its_partner_sits_out():
    assert sit_out([Candidate("m", 1, partner="u"), Candidate("x", 1)], 10) == {"m"}


def test_hidden_requests_return_to_their_places():
    original = ["a", "b", "c", "d"]
    # b and d sat out; the step preempted c and admitted e.
    assert restore_order(original, {"b", "d"}, ["a", "e"]) == ["a", "b", "d", "e"]
    assert restore_order(original, set(), ["a", "b", "c", "d"]) == original


def test_broken_pairs_are_the_running_halves_whose_partner_waits():
    partner_of = {"m": "u", "u": "m", "n": "v", "v": "n"}
    known = {"m", "u", "n", "v", "x"}
    assert broken_pairs(["m", "x", "n", "v"], partner_of, known) == ["m"]
    # A partner that no longer exists is not waiting: the orphan rule handles it.
    assert broken_pairs(["m"], partner_of, {"m"}) == []


def test_commits_counted_from_the_canvases_around_a_step():
    # prefix/exact: the canvas is the whole remaining answer.
    assert committed_in_step([M, M, M, M], 0, [M, 5, M, 7], M) == 2
    # the block of two finished and was emitted; one more committed after it.
    assert committed_in_step([M, 5, M, M], 2, [3, M], M) == 2
    # block mode: the canvas is the block; emitted whole, next block is new.
    assert committed_in_step([M, 4], 2, [M, M], M) == 1
    assert committed_in_step([M, M], 0, [M, 8], M) == 1
    # the last step (finished): masks among the emitted tokens only.
    assert committed_in_step([M, 2, M, M], 2, None, M) == 1
    # fixed canvas positions are never counted.
    assert committed_in_step([1, M, 2], 0, [1, 3, 2], M) == 1
