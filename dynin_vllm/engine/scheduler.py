"""Scheduler seam: what each masked-diffusion request forwards at each step.

vLLM's V1 scheduler already does most of the work: a request's canvas is its
list of draft tokens, scheduled at the positions after its committed tokens;
the runner emits nothing while denoising, so the rejection accounting rolls
``num_computed_tokens`` back over the canvas, and emits a whole block when one
is committed, which the accounting keeps. This subclass adds four things.

1. **Cache semantics per mode.** After each step it moves
   ``num_computed_tokens`` so the next forward covers what the mode needs:
   ``exact`` back to 0 every step (the whole sequence is recomputed);
   ``prefix`` back to 0 after a prefill or a committed block (a refresh
   forward over prompt, committed blocks and the masked suffix), otherwise
   the prefix cache stays; ``block`` back over a just-committed block, whose
   final KV is then written together with the next block's first canvas.
2. **Whole canvases only.** A request is scheduled only if all its tokens fit
   this step's budget (a partial canvas would change attention).
3. **Classifier-free guidance pairs** (``cfg.py``): the hidden unconditional
   branch is added, scheduled and finished with its request, and its outputs
   never reach the client.
4. ``num_sampled_tokens_per_step = 0``: a step that emits nothing keeps
   nothing, as for vLLM's own diffusion models.
"""

from __future__ import annotations

import time
from typing import Any

from vllm.logger import init_logger

from dynin_vllm.diffusion.params import DiffusionParamError, parse_params
from dynin_vllm.engine import cfg, vllm_private
from dynin_vllm.engine.defaults import answer_length, generation_defaults

logger = init_logger(__name__)

Scheduler = vllm_private.scheduler_base()
RequestStatus = vllm_private.request_status()


class DiffusionScheduler(Scheduler):
    """V1 scheduler for masked-diffusion models."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A step that emits nothing keeps nothing (see module docstring).
        self.num_sampled_tokens_per_step = 0
        model_config = self.vllm_config.model_config
        self._defaults = generation_defaults(model_config)
        self._mask_id = model_config.hf_config.mask_token_id
        self._vocab_size = model_config.get_vocab_size()
        self._modes: dict[str, str] = {}
        self._partner: dict[str, str] = {}  # both directions of each CFG pair
        self._uncond: set[str] = set()
        # Prompt logprobs come from the prefill, which emits no token; vLLM
        # reports them with a request's first output, so they wait here.
        self._pending_prompt_logprobs: dict[str, Any] = {}

    # --- admission ---------------------------------------------------------
    def add_request(self, request: Any) -> None:
        params = request.sampling_params
        req_id = request.request_id
        if params is None or req_id in self.requests or req_id in self._uncond:
            return super().add_request(request)
        try:
            parsed = parse_params(
                params.extra_args,
                self._defaults,
                seed=params.seed,
                vocab_size=self._vocab_size,
            )
        except DiffusionParamError as err:  # the front end validates; be robust
            logger.error("Request %s: %s; using default parameters.", req_id, err)
            params.extra_args = None
            parsed = parse_params(None, self._defaults)
        self._modes[req_id] = parsed.mode
        if parsed.canvas is not None:
            # The canvas is the whole answer: finish ("length") when it is done.
            request.max_tokens = min(request.max_tokens, len(parsed.canvas))
        if parsed.uses_cfg:
            cfg.mark_main(params, req_id)
        super().add_request(request)
        self._size_step_metrics(request)
        if parsed.uses_cfg:
            self._add_uncond_branch(request, parsed)

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

    def _add_uncond_branch(self, request: Any, parsed: Any) -> None:
        req_id = request.request_id
        params = request.sampling_params
        branch_id = cfg.uncond_id(req_id)
        prompt = cfg.uncond_prompt(
            list(request.prompt_token_ids or ()),
            list(parsed.uncond_prompt_token_ids or ()),
            self._mask_id,
        )
        if not self._pair_fits(request, len(prompt)):
            logger.error(
                "Request %s: classifier-free guidance needs KV for two sequences "
                "and they cannot both fit in this engine's KV cache; failing it.",
                req_id,
            )
            vllm_private.fail_request_next_step(self, req_id)
            return
        branch = type(request)(
            request_id=branch_id,
            prompt_token_ids=prompt,
            sampling_params=cfg.uncond_sampling_params(params, req_id),
            pooling_params=None,
            client_index=request.client_index,
            arrival_time=request.arrival_time,
            priority=request.priority,
        )
        branch.max_tokens = request.max_tokens
        self._modes[branch_id] = parsed.mode
        self._partner[req_id] = branch_id
        self._partner[branch_id] = req_id
        self._uncond.add(branch_id)
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

    # --- scheduling --------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._split_broken_pairs()
        original = list(self.running)
        hidden = self._unschedulable(original)
        if hidden:
            self.running = [r for r in original if id(r) not in hidden]
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if hidden:
                self.running = self._restore(original, hidden)

    def _need(self, request: Any) -> int:
        return request.num_tokens_with_spec - request.num_computed_tokens

    def _unschedulable(self, running: list[Any]) -> set[int]:
        """Running requests (by ``id``) that cannot run whole this step: a
        canvas over the token budget, or half of a CFG pair whose other half
        is not running. They sit this step out."""
        budget = self.max_num_scheduled_tokens
        running_ids = {r.request_id for r in running}
        hidden: set[int] = set()
        seen: set[str] = set()
        for request in running:
            req_id = request.request_id
            if req_id in seen:
                continue
            group = [request]
            partner_id = self._partner.get(req_id)
            if partner_id is not None:
                if partner_id not in running_ids:
                    hidden.add(id(request))
                    continue
                group.append(self.requests[partner_id])
                seen.add(partner_id)
            need = sum(self._need(r) for r in group)
            if need > budget:
                hidden.update(id(r) for r in group)
            else:
                budget -= need
        return hidden

    def _restore(self, original: list[Any], hidden: set[int]) -> list[Any]:
        """``self.running`` with the hidden requests back in their places.

        Requests the step preempted stay out; requests it admitted follow.
        """
        still_running = {id(r) for r in self.running}
        kept = [r for r in original if id(r) in hidden or id(r) in still_running]
        in_kept = {id(r) for r in kept}
        return kept + [r for r in self.running if id(r) not in in_kept]

    def _split_broken_pairs(self) -> None:
        """A CFG request running without its branch (or the reverse) cannot
        step; preempt it so the pair restarts together."""
        running_ids = {r.request_id for r in self.running}
        stuck = [
            r
            for r in self.running
            if (p := self._partner.get(r.request_id)) is not None
            and p not in running_ids
            and p in self.requests
        ]
        if not stuck:
            return
        now = time.monotonic()
        ids = {id(r) for r in stuck}
        self.running = [r for r in self.running if id(r) not in ids]
        for request in stuck:
            self._preempt_request(request, now)

    # --- after a step ------------------------------------------------------
    def update_from_output(
        self, scheduler_output: Any, model_runner_output: Any
    ) -> Any:
        emitted = self._emitted_counts(scheduler_output, model_runner_output)
        self._defer_prompt_logprobs(model_runner_output, emitted)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        drafts = scheduler_output.scheduled_spec_decode_tokens
        for req_id, num_emitted in emitted.items():
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue
            self._set_next_forward(request, num_emitted, bool(drafts.get(req_id)))
        self._finish_orphans()
        self._drop_uncond_outputs(outputs)
        return outputs

    def _defer_prompt_logprobs(self, model_runner_output: Any, emitted: dict) -> None:
        """Hold prompt logprobs of silent steps until the request emits."""
        logprobs = model_runner_output.prompt_logprobs_dict
        for req_id, num_emitted in emitted.items():
            if not num_emitted and logprobs.get(req_id) is not None:
                self._pending_prompt_logprobs[req_id] = logprobs.pop(req_id)
            elif num_emitted and req_id in self._pending_prompt_logprobs:
                logprobs[req_id] = self._pending_prompt_logprobs.pop(req_id)
        for req_id in [
            r for r in self._pending_prompt_logprobs if r not in self.requests
        ]:
            del self._pending_prompt_logprobs[req_id]

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
        mode = self._modes.get(request.request_id, "prefix")
        if mode == "exact":
            request.num_computed_tokens = 0
        elif mode == "prefix":
            if num_emitted or not had_drafts:
                request.num_computed_tokens = 0
        elif mode == "block" and num_emitted and had_drafts:
            request.num_computed_tokens -= num_emitted

    def _finish_orphans(self) -> None:
        """Finish the other half of CFG pairs that lost one (stop, length, abort).

        A branch outliving its request is aborted. A request outliving its
        branch (the branch hit the context limit first, having a longer
        prompt) cannot continue: it is finished with an error, reported at
        the next step.
        """
        gone = [r for r in self._partner if r not in self.requests]
        for req_id in gone:
            partner = self._partner[req_id]
            if partner in self.requests:
                if partner in self._uncond:
                    super().finish_requests(partner, RequestStatus.FINISHED_ABORTED)
                else:
                    logger.error("CFG branch of %s ended early; failing it.", partner)
                    vllm_private.fail_request_next_step(self, partner)
        for req_id in gone:
            self._forget(req_id)
        for req_id in [r for r in self._modes if r not in self.requests]:
            self._modes.pop(req_id, None)

    def _forget(self, req_id: str) -> None:
        self._partner.pop(req_id, None)
        self._uncond.discard(req_id)
        self._modes.pop(req_id, None)

    def _drop_uncond_outputs(self, outputs: dict) -> None:
        if not self._uncond and not outputs:
            return
        for engine_outputs in outputs.values():
            kept = [
                o
                for o in engine_outputs.outputs
                if cfg.UNCOND_SUFFIX not in o.request_id
            ]
            if len(kept) != len(engine_outputs.outputs):
                engine_outputs.outputs = kept
            finished = getattr(engine_outputs, "finished_requests", None)
            if finished:
                engine_outputs.finished_requests = {
                    r for r in finished if cfg.UNCOND_SUFFIX not in r
                }

    def finish_requests(self, request_ids: Any, finished_status: Any) -> list[Any]:
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        if request_ids is not None:
            request_ids = set(request_ids)
            request_ids |= {self._partner[r] for r in request_ids if r in self._partner}
        finished = super().finish_requests(request_ids, finished_status)
        for request in finished:
            if request.request_id not in self._partner:
                self._modes.pop(request.request_id, None)
        return [r for r in finished if r.request_id not in self._uncond]
