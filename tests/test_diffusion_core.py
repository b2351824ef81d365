"""The runner-agnostic diffusion core: parameters, state and the batched step."""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.diffusion.denoiser import Denoiser, DraftSpan
from dynin_vllm.diffusion.params import (
    BUILTIN_DEFAULTS,
    DiffusionParamError,
    parse_params,
    unknown_params,
)

MASK = 126336
VOCAB = 126400


def test_parameters_merge_request_over_checkpoint_over_builtin():
    params = parse_params(
        {"steps": 4}, {"block_length": 16, "mode": "exact", "steps": 99}, seed=3
    )
    assert params.block_length == 16  # checkpoint default
    assert params.mode == "exact"
    assert params.steps == 4  # the request wins
    assert params.remasking == BUILTIN_DEFAULTS["remasking"]
    assert params.seed == 3
    assert parse_params({"seed": 5}, seed=3).seed == 5


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"block_length": 0}, "block_length"),
        ({"block_length": 2.5}, "block_length"),
        ({"steps": True}, "steps"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": 0.5, "factor": 1.0}, "factor"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"mode": "EXACT"}, "mode"),
        ({"canvas": []}, "canvas"),
        ({"canvas": [1, "a"]}, "canvas"),
        ({"uncond_prompt_token_ids": [VOCAB]}, "uncond_prompt_token_ids"),
    ],
)
def test_invalid_parameters_name_themselves(extra, name):
    with pytest.raises(DiffusionParamError) as err:
        parse_params(extra, vocab_size=VOCAB)
    assert err.value.parameter == name
    assert name in str(err.value)


def test_unknown_parameters_are_reported_but_vllm_keys_are_not():
    assert unknown_params({"block_len": 1, "kv_transfer_params": {}}) == ["block_len"]


def _logits(rows: int, favourite: list[int], strength: list[float]) -> torch.Tensor:
    """Logits whose argmax is ``favourite[i]`` with a margin ``strength[i]``."""
    logits = torch.zeros(rows, VOCAB)
    for i, (tok, s) in enumerate(zip(favourite, strength, strict=True)):
        logits[i, tok] = s
    return logits


def test_step_commits_most_confident_and_emits_whole_blocks():
    den = Denoiser(MASK, VOCAB)
    # answer of 4, block of 2, 1 token per step, greedy.
    den.add_request(
        "a",
        parse_params({"block_length": 2, "mode": "prefix"}, seed=0),
        answer_len=4,
        temperature=0,
    )
    assert den.drafts("a") == [MASK] * 4  # prefix mode: the whole answer
    plan = den.plan([DraftSpan("a", first_row=10, num_rows=4)])
    assert plan.logits_rows.tolist() == [10, 11]  # only the current block
    out = den.step(plan, _logits(2, [7, 8], [1.0, 5.0]))
    assert out == {"a": []}  # one of two committed: nothing emitted yet
    assert den.drafts("a") == [MASK, 8, MASK, MASK]
    plan = den.plan([DraftSpan("a", 0, 4)])
    assert plan.logits_rows.tolist() == [0]  # committed positions need no logits
    out = den.step(plan, _logits(1, [9], [3.0]))
    assert out == {"a": [9, 8]}  # position 1 stays committed
    assert den.drafts("a") == [MASK, MASK]


def test_block_mode_forwards_only_the_current_block():
    den = Denoiser(MASK, VOCAB)
    den.add_request(
        "b",
        parse_params({"block_length": 3, "mode": "block", "threshold": 0.01}, seed=0),
        answer_len=5,
        temperature=0,
    )
    assert den.drafts("b") == [MASK] * 3
    out = den.step(den.plan([DraftSpan("b", 0, 3)]), _logits(3, [4, 5, 6], [9.0] * 3))
    assert out == {"b": [4, 5, 6]}
    assert den.drafts("b") == [MASK] * 2  # the short last block


def test_fixed_canvas_blocks_are_emitted_without_a_step():
    den = Denoiser(MASK, VOCAB)
    canvas = [1, 2, MASK, MASK]
    den.add_request(
        "c",
        parse_params({"block_length": 2, "canvas": canvas}, seed=0),
        answer_len=4,
        temperature=0,
    )
    assert den.restart("c") == [1, 2]  # the all-fixed first block
    assert den.drafts("c") == [MASK, MASK]


def test_cfg_request_waits_for_its_unconditional_branch():
    den = Denoiser(MASK, VOCAB)
    den.add_request(
        "m",
        parse_params({"block_length": 2, "cfg_scale": 1.0}, seed=0),
        answer_len=2,
        temperature=0,
    )
    assert den.plan([DraftSpan("m", 0, 2)]).states == []  # branch not added yet
    den.add_uncond_branch("m::u", "m")
    assert den.drafts("m::u") == den.drafts("m")
    assert den.plan([DraftSpan("m", 0, 2)]).states == []  # branch missing
    plan = den.plan([DraftSpan("m", 0, 2), DraftSpan("m::u", 5, 2)])
    assert plan.logits_rows.tolist() == [0, 1, 5, 6]
    cond = _logits(2, [3, 3], [2.0, 2.0])
    uncond = _logits(2, [3, 4], [2.0, 4.0])
    # guided = u + 2(c - u): row 0 favours 3 (2), row 1 favours 3 (4) over 4 (-4)
    out = den.step(plan, torch.cat([cond, uncond]))
    assert set(out) == {"m", "m::u"}
    assert den.drafts("m") in ([3, MASK], [MASK, 3])


def test_restart_forgets_the_current_block_progress():
    den = Denoiser(MASK, VOCAB)
    den.add_request(
        "r", parse_params({"block_length": 4}, seed=0), answer_len=4, temperature=0
    )
    den.step(den.plan([DraftSpan("r", 0, 4)]), _logits(4, [1, 2, 3, 4], [1, 2, 3, 4]))
    assert den.drafts("r") != [MASK] * 4
    den.restart("r")
    assert den.drafts("r") == [MASK] * 4
    assert den.states["r"].schedule == [1, 1, 1, 1]


def test_fingerprint_tracks_every_request_s_progress():
    """Tensor-parallel ranks compare it each step (see the runner)."""
    a, b = Denoiser(mask_id=9, vocab_size=16), Denoiser(mask_id=9, vocab_size=16)
    for den in (a, b):
        den.add_request(
            "r", parse_params({"block_length": 2}), answer_len=4, temperature=0
        )
    assert a.fingerprint() == b.fingerprint()
    b.states["r"].answer[1] = 3
    assert a.fingerprint() != b.fingerprint()
    b.states["r"].answer[1] = 9
    b.states["r"].step = 1
    assert a.fingerprint() != b.fingerprint()


def test_dual_mode_forwards_the_block_alone_after_its_first_step():
    den = Denoiser(MASK, VOCAB)
    den.add_request(
        "d",
        parse_params({"block_length": 2, "mode": "dual"}, seed=0),
        answer_len=6,
        temperature=0,
    )
    assert den.drafts("d") == [MASK] * 6  # the block's first step: a refresh
    den.step(den.plan([DraftSpan("d", 0, 6)]), _logits(2, [7, 8], [1.0, 5.0]))
    assert den.drafts("d") == [MASK, 8]  # later steps: the block alone
    out = den.step(den.plan([DraftSpan("d", 0, 2)]), _logits(1, [9], [3.0]))
    assert out == {"d": [9, 8]}
    assert den.drafts("d") == [MASK] * 4  # the next block starts with a refresh


def test_the_slot_table_keeps_every_request_s_canvas_as_it_grows():
    """Requests step on rows of one persistent canvas tensor; growing it (more
    slots, longer answers) keeps every request's tokens and its view."""
    from dynin_vllm.diffusion.slots import SlotTable

    den = Denoiser(MASK, VOCAB)
    den.slots = SlotTable(capacity=1, width=2)
    params = parse_params({"block_length": 2}, seed=0)
    for i, length in enumerate((2, 5, 3)):
        den.add_request(f"r{i}", params, answer_len=length, temperature=0)
    assert den.slots.capacity >= 3 and den.slots.width >= 5
    states = [den.states[f"r{i}"] for i in range(3)]
    assert len({s.slot for s in states}) == 3
    spans = [DraftSpan(f"r{i}", 10 * i, s.answer_len) for i, s in enumerate(states)]
    plan = den.plan(spans)
    den.step(plan, _logits(plan.logits_rows.numel(), [4] * 6, [2.0] * 6))
    for s in states:
        assert s.answer.data_ptr() == den.slots.answers[s.slot].data_ptr()
        assert den.slots.answers[s.slot, : s.answer_len].tolist() == s.answer.tolist()
    freed = states[1].slot
    den.remove_request("r1")
    assert states[1].slot == -1 and states[1].answer_len == 5  # kept its tokens
    den.add_request("r3", params, answer_len=4, temperature=0)
    assert den.states["r3"].slot == freed  # the freed slot is reused
    assert den.drafts("r0") == [4, MASK]  # one token per step; kept
    assert den.drafts("r2") == [MASK]  # its first block took one step


def _steps_alone_and_together(specs, logits_for):
    """Canvases after two steps of each request alone, and of all in one batch."""

    def run(names):
        den = Denoiser(MASK, VOCAB)
        for name in names:
            params, answer_len, temperature = specs[name]
            den.add_request(
                name, params, answer_len=answer_len, temperature=temperature
            )
        for _ in range(2):
            spans, row = [], 0
            for name in names:
                spans.append(DraftSpan(name, row, len(den.drafts(name))))
                row += spans[-1].num_rows
            plan = den.plan(spans)
            den.step(plan, logits_for(plan))
        return {name: den.states[name].answer.tolist() for name in names}

    alone = {}
    for name in specs:
        alone.update(run([name]))
    return alone, run(list(specs))


def test_maskgit_and_llada_requests_step_together_as_alone():
    """A batch mixing the two samplers commits each request as it would alone."""
    specs = {
        "image": (
            parse_params({"task": "image_generation", "steps": 4}, seed=1),
            8,
            1.0,
        ),
        "text": (parse_params({"block_length": 4, "steps": 4}, seed=2), 8, 0.0),
        "text2": (
            parse_params({"block_length": 4, "threshold": 0.3}, seed=3),
            8,
            0.0,
        ),
    }

    scores = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(0))
    index = {name: i for i, name in enumerate(specs)}

    def logits_for(plan):
        # A row's logits depend on its request and position, not on the batch.
        logits = torch.full((plan.logits_rows.numel(), VOCAB), -5.0)
        for r, (slot, pos) in enumerate(
            zip(plan.row_slot.tolist(), plan.row_position.tolist(), strict=True)
        ):
            logits[r, :64] = scores[index[plan.states[slot].req_id], pos]
        return logits

    alone, together = _steps_alone_and_together(specs, logits_for)
    assert together == alone
    assert any(t != MASK for t in together["image"])  # every request committed
    assert any(t != MASK for t in together["text"])
    assert any(t != MASK for t in together["text2"])
