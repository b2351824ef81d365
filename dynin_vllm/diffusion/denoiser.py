"""The batched denoising step, independent of any engine.

An engine tells :class:`Denoiser` which requests it forwarded this step and
where their canvas rows sit in the flattened batch (:meth:`Denoiser.plan`); it
computes logits for the rows the plan asks for (only the current block of each
request, never the whole canvas), then hands them to :meth:`Denoiser.step`,
which scores every row, selects and commits positions for every request at
once, and returns the tokens each request emits (whole committed blocks).
All per-step math is batched tensor code; only bookkeeping is per request.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dynin_vllm import kernels
from dynin_vllm.diffusion.params import DiffusionParams
from dynin_vllm.diffusion.schedule import BlockLayout
from dynin_vllm.diffusion.state import RequestState

#: Temperatures below this are greedy, as in vLLM.
GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class DraftSpan:
    """Where a request's canvas rows sit in the flattened forward batch."""

    req_id: str
    first_row: int
    num_rows: int


@dataclass
class StepPlan:
    """Rows to compute logits for, and how they map back to requests."""

    logits_rows: torch.Tensor  # flat hidden-state rows: cond rows, then uncond rows
    num_cond_rows: int
    states: list[RequestState]  # requests updated this step (main branches)
    uncond_ids: list[str | None]  # their CFG partners, if any
    row_slot: torch.Tensor  # per cond row: index into ``states``
    row_offset: torch.Tensor  # per cond row: position inside the block
    uncond_row_index: torch.Tensor | None  # per cond row: row in the logits tensor


def new_seed() -> int:
    """A fresh random int64 seed for requests that did not set one."""
    return secrets.randbits(64) - (1 << 63)


class Denoiser:
    """Holds every request's :class:`RequestState` and runs batched steps."""

    def __init__(
        self, mask_id: int, vocab_size: int, device: torch.device | str = "cpu"
    ):
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.states: dict[str, RequestState] = {}

    # --- request lifecycle -------------------------------------------------
    def add_request(
        self,
        req_id: str,
        params: DiffusionParams,
        *,
        answer_len: int,
        temperature: float,
    ) -> RequestState:
        """Start tracking a request whose answer region has ``answer_len`` slots.

        ``params`` are used as they are (resolved by the caller).
        """
        if params.canvas is not None:
            initial = torch.tensor(params.canvas[:answer_len], dtype=torch.int64)
            answer_len = initial.numel()
        else:
            initial = torch.full((answer_len,), self.mask_id, dtype=torch.int64)
        state = RequestState(
            req_id=req_id,
            params=params,
            layout=BlockLayout(answer_len, params.block_length, params.steps),
            mask_id=self.mask_id,
            temperature=temperature if temperature >= GREEDY_EPS else 0.0,
            seed=params.seed if params.seed is not None else new_seed(),
            initial=initial,
        )
        self.states[req_id] = state
        return state

    def add_uncond_branch(self, branch_id: str, main_id: str) -> RequestState | None:
        """Track the unconditional CFG branch of request ``main_id``.

        The branch mirrors its request (same canvas, noise and schedule) and is
        updated with it; returns ``None`` when the request is already gone.
        """
        main = self.states.get(main_id)
        if main is None:
            return None
        branch = RequestState(
            req_id=branch_id,
            params=main.params,
            layout=main.layout,
            mask_id=self.mask_id,
            temperature=main.temperature,
            seed=main.seed,
            initial=main.initial,
            cfg_partner=main_id,
            is_uncond=True,
        )
        main.cfg_partner = branch_id
        self.states[branch_id] = branch
        return branch

    def remove_request(self, req_id: str) -> None:
        self.states.pop(req_id, None)

    def restart(self, req_id: str) -> list[int]:
        """The request is (re)prefilled: restart its block; emit all-fixed blocks."""
        state = self.states[req_id]
        state.restart_block()
        return state.take_finished_blocks()

    def drafts(self, req_id: str) -> list[int]:
        """The canvas a request forwards next (its CFG branch mirrors it)."""
        state = self.states.get(req_id)
        if state is None:
            return []
        if state.is_uncond:
            main = self.states.get(state.cfg_partner or "")
            return main.drafts() if main is not None else []
        return state.drafts()

    # --- one step ----------------------------------------------------------
    def plan(self, spans: Sequence[DraftSpan]) -> StepPlan:
        """Choose the logits rows: the still-masked positions of each updated
        request's current block (committed positions never need logits).

        A request is updated when its canvas was forwarded, and, for CFG, its
        unconditional branch was forwarded in the same step.
        """
        by_id = {span.req_id: span for span in spans}
        states: list[RequestState] = []
        uncond_ids: list[str | None] = []
        cond_starts: list[int] = []
        uncond_starts: list[int] = []
        offsets: list[torch.Tensor] = []
        for span in spans:
            state = self.states.get(span.req_id)
            if state is None or state.is_uncond or state.finished:
                continue
            size = state.block_size
            if span.num_rows < size:
                continue  # not a full canvas: nothing to update
            partner = by_id.get(state.cfg_partner) if state.cfg_partner else None
            if state.params.uses_cfg and (partner is None or partner.num_rows < size):
                continue  # its unconditional branch was not forwarded with it
            states.append(state)
            uncond_ids.append(state.cfg_partner)
            cond_starts.append(span.first_row)
            uncond_starts.append(partner.first_row if partner else -1)
            offsets.append(state.masked_offsets())

        counts = torch.tensor([o.numel() for o in offsets], dtype=torch.int64)
        row_slot = torch.repeat_interleave(torch.arange(len(offsets)), counts)
        row_offset = (
            torch.cat(offsets) if offsets else torch.zeros(0, dtype=torch.int64)
        )
        cond_rows = torch.tensor(cond_starts, dtype=torch.int64)[row_slot] + row_offset
        num_cond = cond_rows.numel()
        uncond_row_index = None
        rows = cond_rows
        if any(p is not None for p in uncond_ids):
            starts = torch.tensor(uncond_starts, dtype=torch.int64)[row_slot]
            has_cfg = starts >= 0
            uncond_rows = (starts + row_offset)[has_cfg]
            rows = torch.cat([cond_rows, uncond_rows])
            index = torch.arange(num_cond, dtype=torch.int64)
            index[has_cfg] = num_cond + torch.arange(uncond_rows.numel())
            uncond_row_index = index
        return StepPlan(
            logits_rows=rows,
            num_cond_rows=num_cond,
            states=states,
            uncond_ids=uncond_ids,
            row_slot=row_slot,
            row_offset=row_offset,
            uncond_row_index=uncond_row_index,
        )

    def step(self, plan: StepPlan, logits: torch.Tensor) -> dict[str, list[int]]:
        """Denoise every planned request once; returns tokens emitted per request.

        ``logits`` holds one row per ``plan.logits_rows`` entry, in that order.
        CFG branches emit the same tokens as their requests.
        """
        if not plan.states:
            return {}
        device = logits.device
        states = plan.states
        slot = plan.row_slot.to(device)
        offset = plan.row_offset.to(device)

        def per_row(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)[slot]

        temperature = per_row([s.temperature for s in states], torch.float32)
        seed = per_row([s.seed for s in states], torch.int64)
        step = per_row([s.noise_step for s in states], torch.int64)
        position = per_row([s.committed for s in states], torch.int64) + offset
        cond = logits[: plan.num_cond_rows]
        uncond = cfg = None
        if plan.uncond_row_index is not None:
            uncond = logits[plan.uncond_row_index.to(device)]
            cfg = per_row([s.params.cfg_scale for s in states], torch.float32)
        ids, conf = kernels.score_rows(
            cond, temperature, seed, step, position, uncond_logits=uncond, cfg_scale=cfg
        )
        if any(s.params.remasking == "random" for s in states):
            is_random = per_row(
                [s.params.remasking == "random" for s in states], torch.bool
            )
            random_conf = kernels.random_confidence(seed, step, position)
            conf = torch.where(is_random, random_conf.to(conf.dtype), conf)

        width = max(s.block_size for s in states)
        flat = slot * width + offset
        shape = (len(states), width)
        candidates = torch.full(shape, self.mask_id, dtype=torch.int64, device=device)
        candidates.view(-1)[flat] = ids
        confidence = torch.full(shape, float("-inf"), dtype=conf.dtype, device=device)
        confidence.view(-1)[flat] = conf
        current = torch.full(shape, -1, dtype=torch.int64)
        for i, s in enumerate(states):
            start, end = s.block_bounds
            current[i, : end - start] = s.answer[start:end]
        canvas = current.to(device)
        editable = canvas == self.mask_id
        num_transfer = torch.tensor(
            [s.num_transfer() for s in states], dtype=torch.int64, device=device
        )
        threshold = torch.tensor(
            [s.params.threshold or 0.0 for s in states],
            dtype=torch.float64,
            device=device,
        )
        factor = torch.tensor(
            [s.params.factor or 0.0 for s in states], dtype=torch.float64, device=device
        )
        kernels.commit(
            canvas, candidates, confidence, editable, num_transfer, threshold, factor
        )

        new_blocks = canvas.cpu()  # the step's one device-to-host copy
        emitted: dict[str, list[int]] = {}
        for i, (state, uncond_id) in enumerate(
            zip(states, plan.uncond_ids, strict=True)
        ):
            tokens = state.apply_block(new_blocks[i])
            emitted[state.req_id] = tokens
            if uncond_id is not None:
                emitted[uncond_id] = list(tokens)
        return emitted
