"""The batched denoising step, independent of any engine.

An engine tells :class:`Denoiser` which requests it forwarded this step and
where their canvas rows sit in the flattened batch (:meth:`Denoiser.plan`); it
computes logits for the rows the plan asks for (only the current block of each
request, never the whole canvas), then hands them to :meth:`Denoiser.step`,
which scores every row, selects and commits positions for every request at
once, and returns the tokens each request emits (whole committed blocks).
All per-step math is batched tensor code over the slot table
(:mod:`dynin_vllm.diffusion.slots`): every request's canvas and parameters
are gathered with one index, its new tokens written back with one; what stays
per request is plain Python bookkeeping (step counters, block emission).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynin_vllm import kernels
from dynin_vllm.diffusion.params import DiffusionParams
from dynin_vllm.diffusion.schedule import BlockLayout
from dynin_vllm.diffusion.slots import SlotTable
from dynin_vllm.diffusion.state import RequestState, initial_canvas, uncond_view

#: Temperatures below this are greedy, as in vLLM.
GREEDY_EPS = 1e-5

#: Marks a cond row whose unconditional logits come from its request's cache.
_FROM_CACHE = -2

_NO_HOLES = torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True)
class DraftSpan:
    """Where a request's canvas rows sit in the flattened forward batch."""

    req_id: str
    first_row: int
    num_rows: int
    # Row of prompt position 0 when the forward covers the whole prompt, else
    # -1 (infill: the prompt's holes get logits only from such forwards).
    prompt_row: int = -1


@dataclass
class StepPlan:
    """Rows to compute logits for, and how they map back to requests."""

    logits_rows: torch.Tensor  # flat hidden-state rows: cond rows, then uncond rows
    num_cond_rows: int
    states: list[RequestState]  # requests updated this step (main branches)
    uncond_ids: list[str | None]  # their CFG partners, if any
    row_slot: torch.Tensor  # per cond row: index into ``states``
    # Per cond row: column in the request's candidate row, which holds its
    # open prompt holes (if visible this step) and then its current block.
    row_column: torch.Tensor
    row_position: torch.Tensor  # per cond row: answer-relative position
    uncond_row_index: torch.Tensor | None  # per cond row: row in the logits tensor
    hole_indices: list[torch.Tensor]  # per state: holes that are candidates
    # Per cond row: its unconditional logits come from its request's cache.
    uncond_from_cache: torch.Tensor | None = None
    # ``(state index, first logits row, count)``: a static unconditional
    # branch's rows for every remaining answer position, to cache.
    uncond_cache_fills: tuple[tuple[int, int, int], ...] = ()
    # Per logits row (cond, uncond, cache rows): index into ``states``.
    logits_row_slot: torch.Tensor | None = None
    candidates: CandidateRows | None = None


@dataclass
class CandidateRows:
    """Each planned request's candidate row, on the host: its visible open
    prompt holes, then its current block (what a step scores and selects
    from), laid out once by :meth:`Denoiser.plan` for the step to fill."""

    slots: np.ndarray  # [S] each state's row in the slot table
    num_holes: np.ndarray  # [S] hole candidates at the front of its row
    canvas: np.ndarray  # [S, W] current ids: mask id on open holes, -1 past the block
    in_block: np.ndarray  # [S, W] the columns holding the current block
    position: np.ndarray  # [S, W] each column's answer position (clamped)
    table_index: np.ndarray  # [S, W] its flat index into the slot table


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
        self.slots = SlotTable()
        self._with_holes: set[str] = set()  # requests (and branches) that infill
        self._previews: dict[str, list[int]] = {}  # see take_previews
        self._cached_uncond: list[str] = []  # see take_cached_uncond

    # --- request lifecycle -------------------------------------------------
    def add_request(
        self,
        req_id: str,
        params: DiffusionParams,
        *,
        answer_len: int,
        temperature: float,
        prompt: Sequence[int] = (),
    ) -> RequestState:
        """Start tracking a request whose answer region has ``answer_len`` slots.

        ``params`` are used as they are (resolved by the caller). With
        ``params.fills_prompt`` the mask ids of ``prompt`` are denoised too.
        """
        holes = torch.zeros(0, dtype=torch.int64)
        if params.fills_prompt and prompt:
            holes = (torch.tensor(prompt) == self.mask_id).nonzero().flatten()
        initial = initial_canvas(params, answer_len, self.mask_id)
        answer_len = initial.numel()
        state = RequestState(
            req_id=req_id,
            params=params,
            layout=BlockLayout(answer_len, params.block_length, params.steps),
            mask_id=self.mask_id,
            temperature=temperature if temperature >= GREEDY_EPS else 0.0,
            seed=params.seed if params.seed is not None else new_seed(),
            initial=initial,
            holes=holes,
            prompt_len=len(prompt),
        )
        self.states[req_id] = state
        self.slots.add(state)
        if holes.numel():
            self._with_holes.add(req_id)
        return state

    def add_uncond_branch(self, branch_id: str, main_id: str) -> RequestState | None:
        """Track the unconditional CFG branch of request ``main_id``.

        The branch mirrors its request (same canvas, noise and schedule) and is
        updated with it; returns ``None`` when the request is already gone.
        With the default unconditional prompt (the request's, every token but
        the holes masked, as LLaDA's) the holes get guided logits and the
        branch shows their values; with a custom one they are unguided.
        """
        main = self.states.get(main_id)
        if main is None:
            return None
        mirrors_prompt = main.params.uncond_prompt_token_ids is None
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
            holes=main.holes if mirrors_prompt else torch.zeros(0, dtype=torch.int64),
            prompt_len=main.prompt_len,
        )
        main.cfg_partner = branch_id
        self.states[branch_id] = branch
        if branch.holes.numel():
            self._with_holes.add(branch_id)
        return branch

    def remove_request(self, req_id: str) -> None:
        state = self.states.pop(req_id, None)
        if state is not None:
            self.slots.remove(state)
        self._with_holes.discard(req_id)

    def restart(self, req_id: str) -> list[int]:
        """The request is (re)prefilled: restart its block; emit all-fixed blocks."""
        state = self.states[req_id]
        state.restart_block()
        return state.take_finished_blocks()

    def prompt_patches(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(request id, prompt positions, values)`` for every request whose
        forward must show hole values (a CFG branch shows its request's)."""
        for req_id in self._with_holes:
            state = self.states[req_id]
            source = (
                self.states.get(state.cfg_partner or "") if state.is_uncond else state
            )
            if source is not None:
                yield req_id, state.holes, source.hole_values

    def fingerprint(self) -> int:
        """A digest of every request's progress (canvas, holes, block
        and step): equal on every tensor-parallel rank while they agree."""
        digest = hashlib.blake2b(digest_size=8)
        for req_id in sorted(self.states):
            s = self.states[req_id]
            digest.update(req_id.encode())
            digest.update(
                torch.tensor([s.committed, s.block, s.step]).numpy().tobytes()
            )
            digest.update(s.answer.numpy().tobytes())
            digest.update(s.hole_values.numpy().tobytes())
        return int.from_bytes(digest.digest(), "little") % (1 << 50)

    def drafts(self, req_id: str) -> list[int]:
        """The canvas a request forwards next (its CFG branch mirrors it)."""
        state = self.states.get(req_id)
        if state is None:
            return []
        if state.is_uncond:
            main = self.states.get(state.cfg_partner or "")
            if main is None:
                return []
            return uncond_view(main.drafts(), main.committed, main.params, self.mask_id)
        return state.drafts()

    # --- one step ----------------------------------------------------------
    def plan(self, spans: Sequence[DraftSpan]) -> StepPlan:
        """Choose the logits rows: the still-masked positions of each updated
        request's current block (committed positions never need logits), and
        its open prompt holes when this forward shows them.

        A request is updated when its canvas was forwarded, and, for CFG, its
        unconditional branch was forwarded in the same step, or its branch's
        logits are cached (:attr:`RequestState.caches_uncond`: the first step
        that forwards the branch over the whole remaining answer fills it).
        """
        by_id = {span.req_id: span for span in spans}
        states: list[RequestState] = []
        uncond_ids: list[str | None] = []
        hole_indices: list[torch.Tensor] = []
        first_rows: list[int] = []
        # Per state: its partner's first row, or _FROM_CACHE, or -1 (no CFG).
        uncond_first: list[int] = []
        # (state index, logits rows, uncond rows, prompt positions) of holes
        hole_parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        fills: list[tuple[int, int, int]] = []  # (state index, first row, count)
        for span in spans:
            state = self.states.get(span.req_id)
            if state is None or state.is_uncond or state.finished:
                continue
            size = state.block_size
            if span.num_rows < size:
                continue  # not a full canvas: nothing to update
            partner = by_id.get(state.cfg_partner) if state.cfg_partner else None
            cached = state.uncond_cache is not None
            if (
                state.params.uses_cfg
                and not cached
                and (partner is None or partner.num_rows < size)
            ):
                continue  # its unconditional branch was not forwarded with it
            holes = _NO_HOLES
            if state.has_holes and span.prompt_row >= 0 and state.holes_visible():
                holes = state.open_holes()
            fill = (
                not cached
                and partner is not None
                and state.caches_uncond
                and partner.num_rows >= state.answer_len - state.committed
            )
            if fill:
                remaining = state.answer_len - state.committed
                fills.append((len(states), partner.first_row, remaining))
            if cached or fill:  # a cache filled this step serves it too
                uncond_first.append(_FROM_CACHE)
            else:
                uncond_first.append(-1 if partner is None else partner.first_row)
            if holes.numel():
                hole_pos = state.holes[holes].numpy()
                uncond = np.full_like(hole_pos, -1)
                branch = self.states.get(partner.req_id) if partner else None
                if branch is not None and branch.has_holes and partner.prompt_row >= 0:
                    uncond = partner.prompt_row + hole_pos
                hole_parts.append(
                    (len(states), span.prompt_row + hole_pos, uncond, hole_pos)
                )
            states.append(state)
            uncond_ids.append(None if cached else state.cfg_partner)
            hole_indices.append(holes)
            first_rows.append(span.first_row)

        # Index bookkeeping on the host, in numpy (vLLM's input batch does the
        # same): a few microseconds per operation instead of a torch dispatch.
        rows_of = self._candidate_rows(states, hole_indices)
        # The still-masked positions of every current block, in one pass.
        row_slot, columns = (
            rows_of.in_block & (rows_of.canvas == self.mask_id)
        ).nonzero()
        offsets = columns - rows_of.num_holes[row_slot]
        rows = np.array(first_rows, dtype=np.int64)[row_slot] + offsets
        positions = rows_of.position[row_slot, columns]  # in the block: unclamped
        partner_first = np.array(uncond_first, dtype=np.int64)[row_slot]
        uncond = np.where(partner_first >= 0, partner_first + offsets, partner_first)
        if hole_parts:
            parts = [(row_slot, rows, columns, positions, uncond)]
            for i, hole_rows, hole_uncond, hole_pos in hole_parts:
                n = hole_rows.size
                parts.append(
                    (
                        np.full(n, i, dtype=np.int64),
                        hole_rows,
                        np.arange(n),
                        hole_pos - states[i].prompt_len,
                        hole_uncond,
                    )
                )
            row_slot, rows, columns, positions, uncond = (
                np.concatenate(column) for column in zip(*parts, strict=True)
            )
        num_cond = rows.size
        uncond_row_index = None
        has_cfg = uncond >= 0
        from_cache = uncond == _FROM_CACHE
        if has_cfg.any() or from_cache.any():
            index = np.arange(num_cond)
            index[has_cfg] = num_cond + np.arange(int(has_cfg.sum()))
            rows = np.concatenate([rows, uncond[has_cfg]])
            uncond_row_index = torch.from_numpy(index)
        logits_row_slot = np.concatenate([row_slot, row_slot[has_cfg]])
        cache_fills = []
        for slot, first_row, count in fills:
            cache_fills.append((slot, rows.size, count))
            rows = np.concatenate([rows, first_row + np.arange(count)])
            logits_row_slot = np.concatenate(
                [logits_row_slot, np.full(count, slot, dtype=np.int64)]
            )
        return StepPlan(
            logits_rows=torch.from_numpy(rows),
            num_cond_rows=num_cond,
            states=states,
            uncond_ids=uncond_ids,
            row_slot=torch.from_numpy(row_slot),
            row_column=torch.from_numpy(columns),
            row_position=torch.from_numpy(positions),
            uncond_row_index=uncond_row_index,
            hole_indices=hole_indices,
            uncond_from_cache=torch.from_numpy(from_cache)
            if from_cache.any()
            else None,
            uncond_cache_fills=tuple(cache_fills),
            logits_row_slot=torch.from_numpy(logits_row_slot),
            candidates=rows_of,
        )

    def _candidate_rows(
        self, states: list[RequestState], hole_indices: list[torch.Tensor]
    ) -> CandidateRows:
        """The candidate rows of ``states``, with ``hole_indices`` (into each
        state's holes) the holes that are candidates this step."""
        slots = np.array([st.slot for st in states], dtype=np.int64)
        start = np.array([st.committed for st in states], dtype=np.int64)
        size = np.array([st.block_size for st in states], dtype=np.int64)
        num_holes = np.array([h.numel() for h in hole_indices], dtype=np.int64)
        width = int((num_holes + size).max()) if states else 0
        offset = np.arange(width)[None, :] - num_holes[:, None]
        in_block = (offset >= 0) & (offset < size[:, None])
        table = self.slots
        position = np.minimum(np.maximum(start[:, None] + offset, 0), table.width - 1)
        table_index = slots[:, None] * table.width + position
        canvas = np.where(in_block, table.answers.view(-1).numpy()[table_index], -1)
        canvas[offset < 0] = self.mask_id  # open holes
        return CandidateRows(slots, num_holes, canvas, in_block, position, table_index)

    def step(
        self, plan: StepPlan, logits: torch.Tensor, column_offset: int = 0
    ) -> dict[str, list[int]]:
        """Denoise every planned request once; returns tokens emitted per request.

        ``logits`` holds one row per ``plan.logits_rows`` entry, in that order,
        over vocabulary columns ``column_offset, ...`` (see
        :func:`logits_window`). CFG branches emit the same tokens as their
        requests.
        """
        if not plan.states:
            return {}
        device = logits.device
        states = plan.states
        table = self.slots
        rows_of = plan.candidates
        slots = rows_of.slots
        row_slot = plan.row_slot.numpy()
        row_table_slot = slots[row_slot]

        def per_row(values: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(values.numpy()[row_table_slot]).to(device)

        maskgit = table.maskgit.numpy()[slots]
        random_remasking = table.random_remasking.numpy()[row_table_slot]
        temperature = table.temperature.numpy()[row_table_slot]
        # The noise streams' step indices: greedy, low-confidence LLaDA rows
        # draw no noise.
        noise_step = np.zeros(len(states), dtype=np.int64)
        if temperature.any() or maskgit.any() or random_remasking.any():
            noise_step[:] = [s.noise_step for s in states]
        cond = logits[: plan.num_cond_rows]
        uncond = cfg = None
        self._fill_uncond_caches(plan, logits, column_offset)
        if plan.uncond_row_index is not None:
            uncond = logits[plan.uncond_row_index.to(device)]
            cfg = per_row(table.cfg_scale)
            if plan.uncond_from_cache is not None:
                _restore_uncond(plan, uncond, column_offset)
        seed = per_row(table.seed)
        step = torch.from_numpy(noise_step[row_slot]).to(device)
        position = plan.row_position.to(device)
        ids, conf = _score(
            maskgit[row_slot],
            cond,
            torch.from_numpy(temperature).to(device),
            seed,
            step,
            position,
            uncond,
            cfg,
            _allowed_rows(
                states, plan.row_slot, cond.shape[-1] + column_offset, device
            ),
            column_offset,
        )
        if random_remasking.any():
            random_conf = kernels.random_confidence(seed, step, position)
            is_random = torch.from_numpy(random_remasking).to(device)
            conf = torch.where(is_random, random_conf.to(conf.dtype), conf)

        # The selection runs on the host, in numpy: a step's candidate rows are
        # a few dozen ids, and the canvases live on the host anyway.
        ids = ids.cpu().numpy()  # the step's device-to-host copies
        conf = conf.cpu().numpy()

        # Each state's candidate row: its open holes, then its current block.
        canvas, in_block = rows_of.canvas, rows_of.in_block
        shape = canvas.shape
        width = shape[1]
        flat = row_slot * width + plan.row_column.numpy()
        candidates = np.full(shape, self.mask_id, dtype=np.int64)
        candidates.reshape(-1)[flat] = ids
        confidence = np.full(shape, -np.inf, dtype=conf.dtype)
        confidence.reshape(-1)[flat] = conf
        editable = canvas == self.mask_id
        num_transfer = np.array([s.num_transfer() for s in states], dtype=np.int64)
        if maskgit.any():
            self._record_previews(
                states, rows_of.num_holes, canvas, candidates, editable
            )
        selection = (
            candidates,
            confidence,
            editable,
            num_transfer,
            table.threshold.numpy()[slots],
            table.factor.numpy()[slots],
        )
        rows = (~maskgit).nonzero()[0]
        if rows.size == len(states):
            kernels.commit(*map(torch.from_numpy, (canvas, *selection)))
        elif rows.size:
            part = canvas[rows]
            kernels.commit(
                torch.from_numpy(part), *(torch.from_numpy(a[rows]) for a in selection)
            )
            canvas[rows] = part
        if rows.size < len(states):
            rows = maskgit.nonzero()[0]
            self._maskgit_commit(
                [states[i] for i in rows.tolist()],
                rows,
                canvas,
                candidates,
                confidence,
                editable,
                device,
            )

        # Write every block back with one index; count the masks left.
        answers = table.answers.view(-1).numpy()
        answers[rows_of.table_index[in_block]] = canvas[in_block]
        masks_left = ((canvas == self.mask_id) & in_block).sum(axis=1).tolist()
        emitted: dict[str, list[int]] = {}
        for i, (state, uncond_id, holes) in enumerate(
            zip(states, plan.uncond_ids, plan.hole_indices, strict=True)
        ):
            n = holes.numel()
            filled = (holes, torch.from_numpy(canvas[i, :n])) if n else None
            tokens = state.advance(masks_left[i], filled)
            emitted[state.req_id] = tokens
            if uncond_id is not None:
                emitted[uncond_id] = uncond_view(
                    tokens, state.committed - len(tokens), state.params, self.mask_id
                )
        return emitted

    def take_cached_uncond(self) -> list[str]:
        """Requests whose unconditional logits the last step cached: their
        branches need no forward again."""
        cached, self._cached_uncond = self._cached_uncond, []
        return cached

    def _fill_uncond_caches(
        self, plan: StepPlan, logits: torch.Tensor, column_offset: int
    ) -> None:
        """Keep a static branch's logits (its allowed columns only)."""
        for slot, first, count in plan.uncond_cache_fills:
            state = plan.states[slot]
            columns = _allowed_columns(state, logits.device) - column_offset
            if bool((columns < 0).any()) or bool((columns >= logits.shape[1]).any()):
                raise RuntimeError("the logits window misses a request's allowed ids")
            state.uncond_cache = logits[first : first + count][:, columns].clone()
            state.uncond_cache_start = state.committed
            self._cached_uncond.append(state.req_id)

    def take_previews(self) -> dict[str, list[int]]:
        """The predictions previewed by the last step (``preview_steps``):
        ``{request id: answer tokens}``, every slot filled."""
        previews, self._previews = self._previews, {}
        return previews

    def _record_previews(
        self,
        states: list[RequestState],
        num_holes: np.ndarray,
        canvas: np.ndarray,
        candidates: np.ndarray,
        editable: np.ndarray,
    ) -> None:
        """Keep the step's prediction of each request that previews it: its
        candidates on the masked slots and the canvas elsewhere (what upstream's
        step-wise MaskGIT decodes), before the re-masking."""
        rows = [i for i, s in enumerate(states) if s.uses_maskgit and s.wants_preview()]
        if not rows:
            return
        predicted = np.where(editable[rows], candidates[rows], canvas[rows])
        for row, i in enumerate(rows):
            state, n = states[i], int(num_holes[i])
            start, end = state.block_bounds
            block = predicted[row, n : n + end - start]
            state.previewed_step = state.step + 1
            self._previews[state.req_id] = (
                state.answer[:start].tolist() + block.tolist()
            )

    def _maskgit_commit(
        self,
        states: list[RequestState],
        rows: np.ndarray,
        canvas: np.ndarray,
        candidates: np.ndarray,
        confidence: np.ndarray,
        editable: np.ndarray,
        device: torch.device,
    ) -> None:
        """One MaskGIT step for the host canvas ``rows`` of ``states``, in
        place; the re-masking runs on ``device``."""

        def on_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array[rows]).to(device)

        def values(items: list[Any], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(items, dtype=dtype, device=device)

        steps = [s.layout.steps_per_block for s in states]
        part = on_device(canvas)
        kernels.maskgit_commit(
            part,
            on_device(candidates),
            on_device(confidence),
            on_device(editable),
            values(
                [
                    kernels.cosine_mask_len(s.num_slots, s.step, n)
                    for s, n in zip(states, steps, strict=True)
                ],
                torch.int64,
            ),
            values(
                [
                    kernels.annealed_temperature(s.temperature, s.step, n)
                    for s, n in zip(states, steps, strict=True)
                ],
                torch.float64,
            ),
            values([s.seed for s in states], torch.int64),
            values([s.noise_step for s in states], torch.int64),
            values([s.committed for s in states], torch.int64),
        )
        canvas[rows] = part.cpu().numpy()


def logits_window(plan: StepPlan) -> tuple[int, int] | None:
    """The vocabulary columns ``[lo, hi)`` that every row of ``plan`` can
    choose from (the hull of their requests' allowed ranges), or ``None`` when
    some row may take any id. The LM head need compute only these columns:
    8,192 for image rows instead of 138,752."""
    ranges = [s.params.allowed_token_ranges for s in plan.states]
    if not ranges or not all(ranges):
        return None
    return (
        min(lo for r in ranges for lo, _ in r),
        max(hi for r in ranges for _, hi in r),
    )


def logits_row_windows(plan: StepPlan) -> list[tuple[torch.Tensor, int, int]]:
    """For a step whose rows do not all restrict the vocabulary: ``(logits
    rows, lo, hi)`` per group of rows that can only take ids in ``[lo, hi)``
    (their request's allowed hull). The LM head computes those columns only
    for them, and full rows for the others."""
    if plan.logits_row_slot is None or not plan.logits_row_slot.numel():
        return []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, state in enumerate(plan.states):
        ranges = state.params.allowed_token_ranges
        if ranges:
            hull = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
            groups.setdefault(hull, []).append(i)
    windows = []
    for (lo, hi), slots in groups.items():
        rows = torch.isin(plan.logits_row_slot, torch.tensor(slots))
        windows.append((rows.nonzero().flatten(), lo, hi))
    return windows


def _allowed_columns(state: RequestState, device: torch.device) -> torch.Tensor:
    """The vocabulary ids a request's answer may take, in order."""
    ranges = state.params.allowed_token_ranges or ()
    return torch.cat([torch.arange(lo, hi, device=device) for lo, hi in ranges])


def _restore_uncond(plan: StepPlan, uncond: torch.Tensor, column_offset: int):
    """Write cached unconditional logits into their rows of ``uncond`` (over
    columns ``column_offset, ...``), in place. Columns outside the allowed ids
    get 0: the scoring never lets them be chosen."""
    device = uncond.device
    from_cache = plan.uncond_from_cache.to(device)
    slot = plan.row_slot.to(device)
    width = uncond.shape[1]
    for i in torch.unique(slot[from_cache]).tolist():
        state = plan.states[i]
        rows = (from_cache & (slot == i)).nonzero().flatten()
        cache = state.uncond_cache
        at = plan.row_position.to(device)[rows] - state.uncond_cache_start
        columns = _allowed_columns(state, device) - column_offset
        inside = (columns >= 0) & (columns < width)
        values = torch.zeros(rows.numel(), width, dtype=uncond.dtype, device=device)
        values[:, columns[inside]] = cache[at][:, inside].to(uncond.dtype)
        uncond[rows] = values


def _allowed_rows(
    states: list[RequestState],
    row_slot: torch.Tensor,
    vocab: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Per row, its request's allowed ``[lo, hi)`` ranges (``[n, R, 2]``;
    empty ranges pad), or ``None`` when no request restricts the vocabulary."""
    ranges = [s.params.allowed_token_ranges for s in states]
    if not any(ranges):
        return None
    width = max(len(r) for r in ranges if r)
    table = torch.zeros(len(states), width, 2, dtype=torch.int64)
    for i, r in enumerate(ranges):
        if r:
            table[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        else:
            table[i, 0, 1] = vocab  # everything
    return table.to(device)[row_slot.to(device)]


def _score(
    row_is_maskgit: np.ndarray,
    cond: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
    uncond: torch.Tensor | None,
    cfg: torch.Tensor | None,
    allowed: torch.Tensor | None,
    column_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.score_rows`` with each row's guidance formula: MaskGIT's
    ``(1+s)c - s*u`` or LLaDA's ``u + (s+1)(c-u)``, as upstream writes each."""
    num_maskgit = int(row_is_maskgit.sum())
    if cfg is None or num_maskgit in (0, row_is_maskgit.size):
        return kernels.score_rows(
            cond,
            temperature,
            seed,
            step,
            position,
            uncond_logits=uncond,
            cfg_scale=cfg,
            cfg_formula=kernels.CFG_MASKGIT if num_maskgit else kernels.CFG_LLADA,
            allowed=allowed,
            column_offset=column_offset,
        )
    ids = torch.empty(cond.shape[0], dtype=torch.int64, device=cond.device)
    conf = torch.empty(cond.shape[0], dtype=torch.float64, device=cond.device)
    for formula, rows in (
        (kernels.CFG_MASKGIT, row_is_maskgit.nonzero()[0]),
        (kernels.CFG_LLADA, (~row_is_maskgit).nonzero()[0]),
    ):
        rows = torch.from_numpy(rows).to(cond.device)
        ids[rows], conf[rows] = kernels.score_rows(
            cond[rows],
            temperature[rows],
            seed[rows],
            step[rows],
            position[rows],
            uncond_logits=uncond[rows],
            cfg_scale=cfg[rows],
            cfg_formula=formula,
            allowed=None if allowed is None else allowed[rows],
            column_offset=column_offset,
        )
    return ids, conf
