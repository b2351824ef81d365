"""Per-request denoising state.

A request's answer region of ``answer_len`` tokens starts as its initial canvas
(mask ids, possibly mixed with fixed ids) and is denoised block by block, left
to right. ``committed`` counts the answer tokens already emitted: everything
before it is final, the current block starts there, everything after it is
still the initial canvas.

MaskGIT requests (image generation and editing) have one block, the whole
canvas, denoised in ``layout.steps_per_block`` steps by the cosine schedule
(``dynin_vllm.kernels.maskgit``) instead of a transfer-count schedule.

With ``infill`` the prompt's mask ids ("holes") are denoised too (never in
``block`` mode); see ``dynin_vllm.reference.sampler.generate`` for the rules.
Threshold and factor decoding: an open hole is a candidate of every step
that computes its logits (every step in ``exact``, a block's first, full
forward in ``prefix``) and a block ends when it has no mask left. Fixed
steps: a block's schedule spreads its masks and the open holes, every step
shows the holes (in ``prefix`` each step is a full forward while they are
open), and the block ends when both are filled.

What a step forwards (:meth:`RequestState.drafts`) depends on the mode:
``exact`` and ``prefix`` forward every uncommitted answer position, ``block``
the current block; ``dual`` forwards every uncommitted position at a block's
first step (the refresh of prompt, committed blocks and masked suffix) and the
current block alone at its later steps. A request's first forward carries its
prompt and its first canvas (:func:`admission_canvas`), so it denoises too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dynin_vllm.diffusion.params import DiffusionParams
from dynin_vllm.diffusion.schedule import BlockLayout, transfer_counts


def preview_steps(count: int, steps: int) -> set[int]:
    """The (1-based) steps after which a ``steps``-step canvas previews its
    prediction ``count`` times, evenly spaced; the last step never previews
    (its prediction is the result), so a short schedule previews less."""
    chosen = {max(1, steps * (j + 1) // (count + 1)) for j in range(count)}
    return {s for s in chosen if s < steps}


def initial_canvas(
    params: DiffusionParams, answer_len: int, mask_id: int
) -> torch.Tensor:
    """A request's answer region before its first step: its ``canvas``
    (mask ids among fixed ids), else ``answer_len`` mask ids."""
    if params.canvas is not None:
        return torch.tensor(params.canvas[:answer_len], dtype=torch.int64)
    return torch.full((answer_len,), mask_id, dtype=torch.int64)


def admission_canvas(
    params: DiffusionParams, answer_len: int, mask_id: int, committed: int
) -> list[int]:
    """The canvas of a request's first forward after its (re)admission, with
    ``committed`` answer tokens already emitted: exactly what
    :meth:`RequestState.drafts` returns after the block restarts. The
    scheduler forwards it with the prompt, so that forward is a step."""
    initial = initial_canvas(params, answer_len, mask_id)
    layout = BlockLayout(initial.numel(), params.block_length, params.steps)
    if committed >= layout.answer_len:
        return []
    end = layout.answer_len
    if params.mode == "block":
        end = layout.bounds(committed // layout.effective_block_length)[1]
    return initial[committed:end].tolist()


def uncond_view(
    tokens: Sequence[int], start: int, params: DiffusionParams, mask_id: int
) -> list[int]:
    """What a request's unconditional CFG branch shows for ``tokens`` (answer
    positions ``start, ...``): the mask id on the first
    ``uncond_masked_slots`` slots, the request's tokens elsewhere."""
    masked = min(len(tokens), params.uncond_masked_slots - start)
    if masked <= 0:
        return list(tokens)
    return [mask_id] * masked + list(tokens[masked:])


@dataclass
class RequestState:
    """Denoising progress of one request (or of the CFG branch of one)."""

    req_id: str
    params: DiffusionParams
    layout: BlockLayout
    mask_id: int
    temperature: float
    seed: int
    initial: torch.Tensor  # [answer_len] int64, CPU
    answer: torch.Tensor = field(init=False)
    committed: int = 0
    block: int = 0
    step: int = 0
    schedule: list[int] = field(default_factory=list)
    num_steps: int = 0  # denoising forwards that updated this request
    cfg_partner: str | None = None
    is_uncond: bool = False
    # Prompt positions of the holes being filled (empty without infill).
    holes: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, dtype=torch.int64)
    )
    prompt_len: int = 0
    # The last step whose prediction was previewed (``preview_steps``); kept
    # across a restart, so a preempted request never previews a step twice.
    previewed_step: int = 0
    # Static unconditional branch (:attr:`caches_uncond`): its logits over the
    # allowed ids for answer positions ``uncond_cache_start, ...``.
    uncond_cache: torch.Tensor | None = None
    uncond_cache_start: int = 0
    slot: int = -1  # its row in the denoiser's slot table, while it has one
    hole_values: torch.Tensor = field(init=False)  # current value of each hole
    _holes_at_block_start: torch.Tensor = field(init=False)  # (with holes)

    def __post_init__(self) -> None:
        self.answer = self.initial.clone()
        #: Whether the request fills prompt holes (checked every step).
        self.has_holes = bool(self.holes.numel())
        # MaskGIT's schedule counts the canvas's mask slots, fixed ids aside.
        self.num_slots = int((self.initial == self.mask_id).sum())
        self.hole_values = torch.full_like(self.holes, self.mask_id)
        self._holes_at_block_start = self.hole_values
        self._step_stride = self.layout.step_stride
        self._bounds = self.layout.bounds(self.block)
        self._start_block()

    @property
    def answer_len(self) -> int:
        return self.layout.answer_len

    @property
    def finished(self) -> bool:
        return self.committed >= self.answer_len

    @property
    def block_bounds(self) -> tuple[int, int]:
        """Answer-relative ``[start, end)`` of the current block."""
        return self._bounds

    @property
    def block_size(self) -> int:
        return self._bounds[1] - self._bounds[0]

    @property
    def noise_step(self) -> int:
        """Index of the current step in the request's noise stream."""
        return self.block * self._step_stride + self.step

    def num_masked_in_block(self) -> int:
        start, end = self._bounds
        return int((self.answer.numpy()[start:end] == self.mask_id).sum())

    def masked_offsets(self) -> torch.Tensor:
        """Block-relative positions still holding the mask id."""
        start, end = self.block_bounds
        return (self.answer[start:end] == self.mask_id).nonzero().flatten()

    def open_holes(self) -> torch.Tensor:
        """Indices (into :attr:`holes`) of the holes still masked."""
        return (self.hole_values == self.mask_id).nonzero().flatten()

    def holes_pending(self) -> bool:
        """Whether the block must also fill open holes before it ends (fixed
        steps; a hole open past the schedule holds a committed mask id)."""
        return (
            self.has_holes
            and not self.params.dynamic_steps
            and self.step < len(self.schedule)
            and bool((self.hole_values == self.mask_id).any())
        )

    def holes_visible(self) -> bool:
        """Whether this step's forward gives the open holes candidate logits."""
        if self.params.mode == "exact":
            return True
        return self.params.mode in ("prefix", "dual") and (
            self.step == 0 or self.holes_pending()
        )

    def forwards_block_only(self) -> bool:
        """Whether the coming step forwards the current block alone: every
        step in ``block`` mode, and ``dual``'s steps after the block's first
        (full) one, unless open holes need a full forward."""
        mode = self.params.mode
        if mode == "dual":
            return self.step > 0 and not self.holes_pending()
        return mode == "block"

    @property
    def uses_maskgit(self) -> bool:
        return self.params.sampler == "maskgit"

    @property
    def caches_uncond(self) -> bool:
        """Whether the unconditional branch's input never changes, so its
        logits are computed once and kept: every answer slot stays masked in
        it (text to speech), no prompt hole is filled, and the answer may take
        only the allowed ids (the cache holds those columns)."""
        params = self.params
        return (
            params.uses_cfg
            and not self.is_uncond
            and params.allowed_token_ranges is not None
            and params.uncond_masked_slots >= self.answer_len
            and not self.holes.numel()
        )

    def wants_preview(self) -> bool:
        """Whether the coming step's prediction is previewed (``num_previews``
        of a MaskGIT request, at evenly spaced steps before its last)."""
        step = self.step + 1
        return step > self.previewed_step and step in preview_steps(
            self.params.num_previews, self.layout.steps_per_block
        )

    def _start_block(self) -> None:
        self.step = 0
        if self.has_holes:
            self._holes_at_block_start = self.hole_values.clone()
        if self.params.dynamic_steps or self.uses_maskgit:
            self.schedule = []
        else:
            open_holes = self.open_holes().numel() if self.has_holes else 0
            self.schedule = transfer_counts(
                self.num_masked_in_block() + open_holes, self.layout.steps_per_block
            )

    def num_transfer(self) -> int:
        """Positions to commit this step under the fixed schedule."""
        return self.schedule[self.step] if self.step < len(self.schedule) else 0

    def restart_block(self) -> None:
        """Forget the current block's progress (after a preemption)."""
        self.answer[self.committed :] = self.initial[self.committed :]
        if self.has_holes:
            self.hole_values = self._holes_at_block_start.clone()
        self._start_block()

    def drafts(self) -> list[int]:
        """The canvas to forward next: the current block
        (:meth:`forwards_block_only`) or every uncommitted answer position."""
        if self.finished:
            return []
        end = self._bounds[1] if self.forwards_block_only() else self.answer_len
        return self.answer.numpy()[self.committed : end].tolist()

    def take_finished_blocks(self) -> list[int]:
        """Emit every leading block with no mask left; returns their tokens."""
        emitted: list[int] = []
        while (
            not self.finished
            and self.num_masked_in_block() == 0
            and not self.holes_pending()
        ):
            start, end = self._bounds
            emitted += self.answer.numpy()[start:end].tolist()
            self.committed = end
            self.block += 1
            self._bounds = self.layout.bounds(self.block)
            if not self.finished:
                self._start_block()
        return emitted

    def advance(
        self,
        masks_left: int,
        holes: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[int]:
        """Count a step whose new block tokens are already in :attr:`answer`
        (``masks_left`` of them still the mask id), with ``(hole indices,
        values)`` of its hole candidates; return what to emit."""
        if holes is not None:
            self.hole_values[holes[0]] = holes[1]
        self.step += 1
        self.num_steps += 1
        return [] if masks_left else self.take_finished_blocks()
