"""Scheduler seam: what each masked-diffusion request forwards at each step.

vLLM's V1 scheduler already does most of the work: a request's canvas is its
list of draft tokens, scheduled at the positions after its committed tokens;
the runner emits nothing while denoising, so the rejection accounting rolls
``num_computed_tokens`` back over the canvas, and emits a whole block when one
is committed, which the accounting keeps. This subclass adds the rest.

1. **Every forward is a denoising step.** A request's first forward (and
   its first after a preemption) carries its prompt *and* its first canvas
   (``state.admission_canvas``): the KV manager reserves the canvas's slots
   when it admits the request, and the canvas joins the step when it fits
   the token budget whole (otherwise that forward is a prompt-only prefill
   and the canvas follows in the next step). A request that asks for prompt
   logprobs keeps a prompt-only first forward: they are the prompt's alone.
2. **Cache semantics per mode.** After each step it moves
   ``num_computed_tokens`` so the next forward covers what the mode needs:
   ``exact`` back to 0 every step (the whole sequence is recomputed);
   ``prefix`` and ``dual`` back to 0 after a committed block (the next
   block's first step is a full forward that refreshes prompt, committed
   blocks and the masked suffix), otherwise the cache stays; ``block`` back
   over a just-committed block, whose final KV is then written together
   with the next block's first canvas. (``dual``'s later steps forward only
   the block: the runner lets them attend to the cached suffix too.)
3. **Whole canvases only.** A request is scheduled only if all its tokens fit
   this step's budget (a partial canvas would change attention).
4. **Classifier-free guidance pairs** (``cfg.py``): the hidden unconditional
   branch is added, scheduled and finished with its request, and its outputs
   never reach the client; a branch whose logits the runner cached is
   finished early.
5. **Diffusion statistics** (``stats.py``): denoising steps, committed
   tokens and steps per request, by task and mode, reported in place of
   vLLM's speculative-decoding statistics; running and waiting counts treat a
   CFG pair as one request.
6. ``num_sampled_tokens_per_step = 0``: a step that emits nothing keeps
   nothing, as for vLLM's own diffusion models.
7. **Infilling** (``infill.py``): the hole values the runner reports are
   attached to a finishing request's output, for the front end to put back
   into the prompt it reports.
8. **Previews** (``previews.py``): a previewed step adds a token-less output
   carrying the canvas's predictions so far; the final output carries them
   all.

Each request's facts live in one :class:`RequestRecord`; the scheduling rules
themselves are pure functions in ``scheduling.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vllm.logger import init_logger

from dynin_vllm import vllm_private
from dynin_vllm.diffusion.params import DiffusionParams
from dynin_vllm.diffusion.schedule import BlockLayout
from dynin_vllm.diffusion.state import admission_canvas, uncond_view
from dynin_vllm.engine import cfg, infill, previews, scheduling
from dynin_vllm.engine.defaults import answer_length
from dynin_vllm.engine.stats import DiffusionStatsBuilder
from dynin_vllm.engine.validation import ResolvedParamsError, resolved_params

logger = init_logger(__name__)

Scheduler = vllm_private.scheduler_base()
RequestStatus = vllm_private.request_status()


@dataclass
class RequestRecord:
    """What the scheduler knows about one request (or CFG branch)."""

    params: DiffusionParams
    role: cfg.Role = cfg.Role.PLAIN
    partner: str | None = None  # the other half of a CFG pair
    num_steps: int = 0  # denoising steps so far
    # The last denoising step, until the next canvas shows what it committed.
    last_canvas: list[int] | None = None
    last_emitted: int = 0
    # Prompt logprobs come from the prefill, which emits no token; vLLM
    # reports them with a request's first output, so they wait here.
    pending_prompt_logprobs: Any = None
    stats_closed: bool = False  # its last step and step count are recorded
    holes: list[int] | None = None  # prompt positions it fills (infill)
    hole_values: list[int] | None = None  # their values after the last step
    previews: list[list[int]] | None = None  # canvas previews so far
    silent_steps: int = 0  # denoising steps since it last emitted a block
    max_silent_steps: int = 0  # more than this means it cannot finish

    @property
    def mode(self) -> str:
        return self.params.mode

    @property
    def task(self) -> str:
        return self.params.task


class DiffusionScheduler(Scheduler):
    """V1 scheduler for masked-diffusion models."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A step that emits nothing keeps nothing (see module docstring).
        self.num_sampled_tokens_per_step = 0
        self._mask_id = self.vllm_config.model_config.hf_config.mask_token_id
        self._records: dict[str, RequestRecord] = {}
        # Branches forgotten since the last step's outputs, whose ids vLLM may
        # still report as finished in the next step's outputs.
        self._retired_branches: set[str] = set()
        self._stats = DiffusionStatsBuilder()
        vllm_private.reserve_admission_slots(
            self, lambda request: len(self._admission_canvas(request))
        )

    # --- admission ---------------------------------------------------------
    def add_request(self, request: Any) -> None:
        req_id = request.request_id
        if request.sampling_params is None or req_id in self._records:
            return super().add_request(request)
        try:
            params = resolved_params(request.sampling_params)
        except ResolvedParamsError as err:
            logger.error("Request %s: %s; failing it.", req_id, err)
            super().add_request(request)
            vllm_private.fail_request_next_step(self, req_id)
            return
        record = RequestRecord(params)
        if params.fills_prompt:
            prompt = request.prompt_token_ids or ()
            record.holes = [i for i, t in enumerate(prompt) if t == self._mask_id]
        record.max_silent_steps = self._max_steps_per_block(request, record)
        self._records[req_id] = record
        if params.canvas is not None:
            # The canvas is the whole answer: finish ("length") when it is done.
            request.max_tokens = min(request.max_tokens, len(params.canvas))
        super().add_request(request)
        self._size_step_metrics(request)
        if params.uses_cfg:
            record.role = cfg.Role.MAIN
            self._add_uncond_branch(request, record)

    def _max_steps_per_block(self, request: Any, record: RequestRecord) -> int:
        """The most denoising steps one block can take: its fixed schedule, or
        (threshold, factor) one commit per step over its masks and the holes."""
        params = record.params
        answer = len(params.canvas) if params.canvas else self._answer_len(request)
        layout = BlockLayout(answer, params.block_length, params.steps)
        return layout.step_stride + len(record.holes or ())

    def _size_step_metrics(self, request: Any) -> None:
        """Per-request step metrics, with a histogram no longer than the answer.

        vLLM sizes it by the draft budget (the whole context for us). Indexed
        by the tokens committed in a step, it needs one bin per answer slot.
        """
        if request.spec_decode_metrics is None:
            return
        bound = self._answer_len(request)
        request.spec_decode_metrics = vllm_private.request_step_metrics(bound)

    def _answer_len(self, request: Any) -> int:
        return answer_length(
            request.sampling_params, request.num_prompt_tokens, self.max_model_len
        )

    def _add_uncond_branch(self, request: Any, record: RequestRecord) -> None:
        req_id = request.request_id
        branch_id = cfg.uncond_id(req_id)
        prompt = cfg.uncond_prompt(
            list(request.prompt_token_ids or ()),
            list(record.params.uncond_prompt_token_ids or ()),
            self._mask_id,
        )
        if not self._pair_fits(request, len(prompt)):
            logger.error(
                "Request %s: classifier-free guidance needs KV for two sequences "
                "and they cannot both fit in this engine's KV cache; failing it.",
                req_id,
            )
            record.role = cfg.Role.PLAIN
            vllm_private.fail_request_next_step(self, req_id)
            return
        branch = vllm_private.new_request(
            request,
            request_id=branch_id,
            prompt_token_ids=prompt,
            sampling_params=cfg.uncond_sampling_params(request.sampling_params, req_id),
        )
        branch.max_tokens = request.max_tokens
        record.partner = branch_id
        self._records[branch_id] = RequestRecord(
            record.params, role=cfg.Role.UNCOND, partner=req_id
        )
        super().add_request(branch)
        self._size_step_metrics(branch)

    def _pair_fits(self, request: Any, uncond_prompt_len: int) -> bool:
        """Whether a CFG request and its branch fit the KV cache together."""
        answer = self._answer_len(request)
        pool = self.kv_cache_manager.block_pool
        usable = pool.num_gpu_blocks - 1  # one block is vLLM's null block

        def blocks(num_tokens: int) -> int:
            return -(-num_tokens // self.block_size)

        need = blocks(request.num_prompt_tokens + answer)
        need += blocks(uncond_prompt_len + answer)
        return need <= usable

    def _admission_canvas(self, request: Any) -> list[int]:
        """The canvas a (re)admitted request forwards with its prompt: its
        first block's canvas from its emitted tokens on (a CFG branch shows
        its request's as the branch does); empty when it does not denoise."""
        record = self._records.get(request.request_id)
        if record is None or record.params.scores_likelihood:
            return []
        if request.sampling_params.prompt_logprobs is not None:
            # Its prompt logprobs are those of the prompt alone, as vLLM's
            # prefill reports them: that forward stays prompt-only.
            return []
        main = request
        if record.role is cfg.Role.UNCOND:
            main = self.requests.get(record.partner or "")
            if main is None:
                return []
        params = record.params
        answer = len(params.canvas) if params.canvas else self._answer_len(main)
        committed = request.num_output_tokens
        canvas = admission_canvas(params, answer, self._mask_id, committed)
        if record.role is cfg.Role.UNCOND:
            canvas = uncond_view(canvas, committed, params, self._mask_id)
        return canvas

    def _update_after_schedule(self, scheduler_output: Any) -> None:
        """Add their first canvas to the forwards of requests admitted this
        step whose whole prompt (or resumed sequence) was scheduled, when it
        fits the token budget; a CFG pair's two canvases join together."""
        admitted = [r.req_id for r in scheduler_output.scheduled_new_reqs]
        admitted += scheduler_output.scheduled_cached_reqs.resumed_req_ids
        scheduled = scheduler_output.num_scheduled_tokens
        canvases: dict[str, list[int]] = {}
        for req_id in admitted:
            request = self.requests.get(req_id)
            if request is not None and scheduled.get(req_id) == (
                request.num_tokens - request.num_computed_tokens
            ):
                canvases[req_id] = self._admission_canvas(request)
        room = (
            self.max_num_scheduled_tokens - scheduler_output.total_num_scheduled_tokens
        )
        for req_id in admitted:
            if not canvases.get(req_id):
                continue
            record = self._records[req_id]
            unit = [req_id]
            if record.partner is not None:
                if not canvases.get(record.partner):
                    continue  # the pair cannot step without both halves
                unit.append(record.partner)
            need = sum(len(canvases[r]) for r in unit)
            if need > room:
                continue
            room -= need
            for r in unit:
                canvas = canvases.pop(r)
                scheduled[r] += len(canvas)
                scheduler_output.scheduled_spec_decode_tokens[r] = canvas
                self._records[r].silent_steps = 0  # its block restarts
            scheduler_output.total_num_scheduled_tokens += need
        super()._update_after_schedule(scheduler_output)

    def _partner_of(self) -> dict[str, str]:
        return {r: rec.partner for r, rec in self._records.items() if rec.partner}

    def _is_uncond(self, req_id: str) -> bool:
        record = self._records.get(req_id)
        return record is not None and record.role is cfg.Role.UNCOND

    # --- scheduling --------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._preempt_broken_pairs()
        original = list(self.running)
        hidden = scheduling.sit_out(
            [
                scheduling.Candidate(
                    r.request_id,
                    r.num_tokens_with_spec - r.num_computed_tokens,
                    self._records[r.request_id].partner
                    if r.request_id in self._records
                    else None,
                )
                for r in original
            ],
            self.max_num_scheduled_tokens,
        )
        if hidden:
            self.running = [r for r in original if r.request_id not in hidden]
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if hidden:
                by_id = {r.request_id: r for r in original}
                by_id.update({r.request_id: r for r in self.running})
                order = scheduling.restore_order(
                    [r.request_id for r in original],
                    hidden,
                    [r.request_id for r in self.running],
                )
                self.running = [by_id[r] for r in order]

    def _preempt_broken_pairs(self) -> None:
        """A CFG request running without its branch (or the reverse) cannot
        step; preempt it so the pair restarts together."""
        stuck = set(
            scheduling.broken_pairs(
                [r.request_id for r in self.running],
                self._partner_of(),
                set(self.requests),
            )
        )
        if not stuck:
            return
        now = time.monotonic()
        preempted = [r for r in self.running if r.request_id in stuck]
        self.running = [r for r in self.running if r.request_id not in stuck]
        for request in preempted:
            self._preempt_request(request, now)

    def _free_encoder_inputs(self, request: Any) -> None:
        # Keep a request's encoder outputs (its image embeddings) until it
        # finishes: its forwards re-cover the prompt (every step in ``exact``,
        # each refresh in ``prefix``, every likelihood row), and a freed entry
        # may be evicted and the image encoded again. vLLM frees them when the
        # request finishes, is aborted or is preempted.
        return None

    # --- after a step ------------------------------------------------------
    def update_from_output(
        self, scheduler_output: Any, model_runner_output: Any
    ) -> Any:
        emitted = self._emitted_counts(scheduler_output, model_runner_output)
        self._defer_prompt_logprobs(model_runner_output, emitted)
        drafts = scheduler_output.scheduled_spec_decode_tokens
        for req_id, num_emitted in emitted.items():
            record = self._records.get(req_id)
            canvas = drafts.get(req_id)
            if record is not None and canvas:
                record.num_steps += 1
                record.last_canvas = list(canvas)
                record.last_emitted = num_emitted
                record.silent_steps = 0 if num_emitted else record.silent_steps + 1
                self._fail_if_stalled(req_id, record)
            elif record is not None:
                record.silent_steps = 0  # a (re)prefill restarts the block
        for req_id, values in infill.prompt_fills(model_runner_output).items():
            if (record := self._records.get(req_id)) is not None:
                record.hole_values = values
        branches = {r for r in self._records if self._is_uncond(r)}
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._attach_filled_prompts(outputs)
        self._add_previews(outputs, previews.step_previews(model_runner_output))
        for req_id, num_emitted in emitted.items():
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue
            self._set_next_forward(request, num_emitted, bool(drafts.get(req_id)))
        for req_id in cfg.cached_uncond(model_runner_output):
            self._release_branch(req_id)
        self._finish_orphans()
        self._drop_branch_outputs(outputs, branches | self._retired_branches)
        self._retired_branches.clear()
        self._retire_finished()
        return outputs

    def _fail_if_stalled(self, req_id: str, record: RequestRecord) -> None:
        """A block that outlasts every schedule can never finish: the model
        keeps committing the mask id itself, so the position stays masked.
        Fail the request (and so its CFG pair) instead of stepping forever."""
        if record.role is cfg.Role.UNCOND or record.silent_steps <= (
            record.max_silent_steps
        ):
            return
        logger.error(
            "Request %s: no block committed in %d denoising steps (a block takes "
            "at most %d); the model keeps choosing the mask id %d at a masked "
            "position. Failing the request.",
            req_id,
            record.silent_steps,
            record.max_silent_steps,
            self._mask_id,
        )
        record.silent_steps = 0
        vllm_private.fail_request_next_step(self, req_id)

    def _attach_filled_prompts(self, outputs: dict) -> None:
        for engine_outputs in outputs.values():
            for output in engine_outputs.outputs:
                record = self._records.get(output.request_id)
                if (
                    output.finish_reason is not None
                    and record is not None
                    and record.holes
                    and record.hole_values is not None
                ):
                    output.kv_transfer_params = infill.attach(
                        output.kv_transfer_params, record.holes, record.hole_values
                    )

    def _add_previews(self, outputs: dict, step_previews: dict) -> None:
        """A token-less output per previewed request still denoising, and
        every preview so far on a finishing request's output."""
        for req_id, tokens in step_previews.items():
            request = self.requests.get(req_id)
            record = self._records.get(req_id)
            if (
                request is None
                or record is None
                or request.status != RequestStatus.RUNNING
                or record.role is cfg.Role.UNCOND
            ):
                continue
            record.previews = [*(record.previews or []), tokens]
            vllm_private.add_engine_output(
                outputs, request, previews.preview_params(record.previews)
            )
        for engine_outputs in outputs.values():
            for output in engine_outputs.outputs:
                record = self._records.get(output.request_id)
                if output.finish_reason is not None and record and record.previews:
                    output.kv_transfer_params = previews.preview_params(
                        record.previews, output.kv_transfer_params
                    )

    def update_draft_token_ids(self, draft_token_ids: Any) -> None:
        super().update_draft_token_ids(draft_token_ids)
        for req_id in draft_token_ids.req_ids:
            record = self._records.get(req_id)
            request = self.requests.get(req_id)
            if record is None or record.last_canvas is None or request is None:
                continue
            self._observe_step(record, list(request.spec_token_ids))

    def _observe_step(self, record: RequestRecord, next_canvas: list[int] | None):
        canvas, record.last_canvas = record.last_canvas, None
        if canvas is None or record.role is cfg.Role.UNCOND:
            return
        committed = scheduling.committed_in_step(
            canvas, record.last_emitted, next_canvas, self._mask_id
        )
        self._stats.observe_step(record.task, record.mode, committed, len(canvas))

    def make_spec_decoding_stats(self, *args: Any, **kwargs: Any) -> None:
        # vLLM's per-draft-position statistics do not apply: the diffusion
        # statistics replace them (see make_stats).
        return None

    def make_stats(self, *args: Any, **kwargs: Any) -> Any:
        stats = super().make_stats(*args, **kwargs)
        if stats is None:
            return None
        for req_id, record in self._records.items():
            if req_id not in self.requests:
                self._close_stats(record)
        stats.spec_decoding_stats = self._stats.flush(self.num_spec_tokens)
        # A CFG pair is one request to its client.
        stats.num_running_reqs -= sum(
            1 for r in self.running if self._is_uncond(r.request_id)
        )
        stats.num_waiting_reqs -= sum(
            1 for r in self.waiting if self._is_uncond(r.request_id)
        )
        return stats

    def _defer_prompt_logprobs(self, model_runner_output: Any, emitted: dict) -> None:
        """Hold prompt logprobs of silent steps until the request emits."""
        logprobs = model_runner_output.prompt_logprobs_dict
        for req_id, num_emitted in emitted.items():
            record = self._records.get(req_id)
            if record is None:
                continue
            if not num_emitted and logprobs.get(req_id) is not None:
                record.pending_prompt_logprobs = logprobs.pop(req_id)
            elif num_emitted and record.pending_prompt_logprobs is not None:
                logprobs[req_id] = record.pending_prompt_logprobs
                record.pending_prompt_logprobs = None

    @staticmethod
    def _emitted_counts(scheduler_output: Any, model_runner_output: Any) -> dict:
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        return {
            req_id: len(sampled[index[req_id]]) if sampled and req_id in index else 0
            for req_id in scheduler_output.num_scheduled_tokens
        }

    def _set_next_forward(
        self, request: Any, num_emitted: int, had_drafts: bool
    ) -> None:
        record = self._records.get(request.request_id)
        mode = record.mode if record is not None else "prefix"
        if record is not None and record.params.scores_likelihood:
            # Every Monte Carlo row is a forward of the whole prompt.
            request.num_computed_tokens = 0
        elif mode == "exact":
            request.num_computed_tokens = 0
        elif mode in ("prefix", "dual"):
            if num_emitted or not had_drafts or self._holes_pending(record):
                request.num_computed_tokens = 0
        elif mode == "block" and not had_drafts:
            # A prompt-only prefill (its canvas did not fit that step): the
            # prompt's KV is written with the first canvas, as a first forward.
            request.num_computed_tokens = 0
        elif mode == "block" and num_emitted:
            request.num_computed_tokens -= num_emitted

    def _holes_pending(self, record: RequestRecord | None) -> bool:
        """Fixed-step infill: a step shows the prompt (a full forward) while
        holes are open (see ``dynin_vllm.diffusion.state``); a CFG branch
        follows its request."""
        if record is not None and record.role is cfg.Role.UNCOND:
            record = self._records.get(record.partner or "")
        return (
            record is not None
            and bool(record.holes)
            and not record.params.dynamic_steps
            and record.hole_values is not None
            and self._mask_id in record.hole_values
        )

    def _release_branch(self, req_id: str) -> None:
        """The runner cached ``req_id``'s unconditional logits: its branch is
        finished (its KV freed) and the request goes on unpaired."""
        record = self._records.get(req_id)
        if record is None or record.partner is None:
            return
        branch_id, record.partner = record.partner, None
        if (branch := self._records.get(branch_id)) is not None:
            branch.partner = None
        if branch_id in self.requests:
            super().finish_requests(branch_id, RequestStatus.FINISHED_ABORTED)

    def _finish_orphans(self) -> None:
        """Finish the other half of CFG pairs that lost one (stop, length, abort).

        A branch outliving its request is aborted. A request outliving its
        branch (the branch hit the context limit first, having a longer
        prompt) cannot continue: it is finished with an error, reported at
        the next step.
        """
        for req_id, record in list(self._records.items()):
            if req_id in self.requests or record.partner is None:
                continue
            partner = record.partner
            if partner in self.requests:
                if self._is_uncond(partner):
                    super().finish_requests(partner, RequestStatus.FINISHED_ABORTED)
                else:
                    logger.error("CFG branch of %s ended early; failing it.", partner)
                    vllm_private.fail_request_next_step(self, partner)
            record.partner = None
            partner_record = self._records.get(partner)
            if partner_record is not None:
                partner_record.partner = None

    def _close_stats(self, record: RequestRecord) -> None:
        """Record a finished request's last step and its number of steps."""
        if (
            record.stats_closed
            or record.role is cfg.Role.UNCOND
            or record.params.scores_likelihood  # scores; never denoises
        ):
            return
        record.stats_closed = True
        self._observe_step(record, None)
        self._stats.observe_finished(record.task, record.mode, record.num_steps)

    def _retire_finished(self) -> None:
        """Forget the records of requests vLLM no longer holds."""
        for req_id in [r for r in self._records if r not in self.requests]:
            record = self._records.pop(req_id)
            self._close_stats(record)
            if record.role is cfg.Role.UNCOND:
                self._retired_branches.add(req_id)

    @staticmethod
    def _drop_branch_outputs(outputs: dict, branches: set[str]) -> None:
        if not branches:
            return
        for engine_outputs in outputs.values():
            kept = [o for o in engine_outputs.outputs if o.request_id not in branches]
            if len(kept) != len(engine_outputs.outputs):
                engine_outputs.outputs = kept
            finished = getattr(engine_outputs, "finished_requests", None)
            if finished:
                engine_outputs.finished_requests = {
                    r for r in finished if r not in branches
                }

    def finish_requests(self, request_ids: Any, finished_status: Any) -> list[Any]:
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        if request_ids is not None:
            request_ids = set(request_ids)
            request_ids |= {
                rec.partner
                for r in request_ids
                if (rec := self._records.get(r)) is not None and rec.partner
            }
        finished = super().finish_requests(request_ids, finished_status)
        shown = [r for r in finished if not self._is_uncond(r.request_id)]
        self._retire_finished()
        return shown
