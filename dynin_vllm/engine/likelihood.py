"""Likelihood requests in the model runner.

A request with ``likelihood_tokens`` scores the end of its prompt
(``dynin_vllm.diffusion.likelihood``) and generates nothing. The scheduler
re-forwards its whole prompt every step (``num_computed_tokens`` back to 0,
no canvas); before each forward the runner writes the next Monte Carlo row
into the continuation's prompt tokens (the scheduler's copy of the prompt
never changes), and computes logits only for the row's masked positions.
Rows of every likelihood request in a step share one batched cross-entropy.

After its last row a request emits one token, the end-of-sequence id, which
finishes it, and reports its estimate as prompt logprobs: each continuation
position carries its share of the ELBO (the shares add up to the estimate),
and each context position 0.0 (given, not scored). Every entry's rank is 1
and its top logprobs hold only the token itself; the emitted token's
logprob is 0.0 (it is not an estimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dynin_vllm import vllm_private
from dynin_vllm.diffusion.denoiser import new_seed
from dynin_vllm.diffusion.likelihood import LikelihoodState
from dynin_vllm.diffusion.params import DiffusionParams


@dataclass(frozen=True)
class LikelihoodPlan:
    """This step's rows, in the order their logits follow the denoiser's."""

    logits_rows: torch.Tensor  # flat hidden-state rows
    targets: torch.Tensor  # the true token of each row
    states: list[LikelihoodState]  # one per forwarded request
    counts: list[int]  # logits rows per state


class LikelihoodRequests:
    """The runner's likelihood requests and their Monte Carlo progress."""

    def __init__(self, mask_id: int, eos_id: int):
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.states: dict[str, LikelihoodState] = {}
        self._reports: dict[str, Any] = {}

    def add(self, req_id: str, params: DiffusionParams, prompt: list[int]) -> None:
        assert params.likelihood_tokens is not None
        self.states[req_id] = LikelihoodState(
            req_id=req_id,
            prompt=torch.tensor(prompt, dtype=torch.int64),
            start=len(prompt) - params.likelihood_tokens,
            mc_num=params.mc_num,
            group_size=params.mc_batch_size,
            seed=params.seed if params.seed is not None else new_seed(),
            mask_id=self.mask_id,
        )

    def remove(self, req_id: str) -> None:
        self.states.pop(req_id, None)
        self._reports.pop(req_id, None)

    def patches(self):
        """``(req_id, prompt positions, tokens)``: each request's next row."""
        for req_id, state in self.states.items():
            if not state.finished:
                positions = torch.arange(state.start, state.prompt.numel())
                yield req_id, positions, state.row_tokens()

    def plan(self, forwarded: list[tuple[str, int]]) -> LikelihoodPlan:
        """Rows for the requests whose whole prompt is forwarded this step:
        ``forwarded`` holds ``(req_id, flat row of prompt position 0)``."""
        rows, targets, states, counts = [], [], [], []
        for req_id, first in forwarded:
            state = self.states[req_id]
            if state.finished:
                continue
            masked = state.masked_positions()
            rows.append(first + masked)
            targets.append(state.prompt[masked])
            states.append(state)
            counts.append(masked.numel())
        if not rows:
            empty = torch.zeros(0, dtype=torch.int64)
            return LikelihoodPlan(empty, empty, [], [])
        return LikelihoodPlan(torch.cat(rows), torch.cat(targets), states, counts)

    def step(self, plan: LikelihoodPlan, logits: torch.Tensor) -> dict[str, list[int]]:
        """Account one row per planned request; returns the end-of-sequence
        token for each request whose estimate is complete."""
        if not plan.states:
            return {}
        cross_entropy = _cross_entropy(logits, plan.targets.to(logits.device)).cpu()
        emitted = {}
        for state, ce in zip(
            plan.states, cross_entropy.split(plan.counts), strict=True
        ):
            state.add_row(ce)
            if state.finished:
                self._reports[state.req_id] = self._report(state)
                emitted[state.req_id] = [self.eos_id]
        return emitted

    def take_reports(self) -> dict[str, Any]:
        """Prompt logprobs of the requests that finished this step."""
        reports, self._reports = self._reports, {}
        return reports

    @staticmethod
    def _report(state: LikelihoodState) -> Any:
        prompt = state.prompt
        values = torch.zeros(prompt.numel() - 1, dtype=torch.float32)
        values[state.start - 1 :] = state.estimate_shares().to(torch.float32)
        return _logprobs(prompt[1:], values)


#: Rows per float64 cross-entropy chunk: a whole step's rows at once would
#: materialize ``rows x vocabulary`` float64 values (300 MB for 272 rows of
#: the real vocabulary), several times slower than small chunks.
CE_CHUNK_ROWS = 4


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 cross-entropy of ``targets`` under each row of ``logits``."""
    parts = []
    for rows, target in zip(
        logits.split(CE_CHUNK_ROWS), targets.split(CE_CHUNK_ROWS), strict=True
    ):
        rows = rows.to(torch.float64)
        picked = rows.gather(1, target[:, None]).squeeze(1)
        parts.append(torch.logsumexp(rows, dim=-1) - picked)
    return torch.cat(parts)


def sample_logprobs(sampled: torch.Tensor) -> Any:
    """Logprobs of every entry of ``sampled`` ``[rows, width]`` (flattened, as
    vLLM's multi-token outputs take them): each token itself with 0.0."""
    return _logprobs(sampled.reshape(-1).clamp(min=0), None)


def _logprobs(tokens: torch.Tensor, values: torch.Tensor | None) -> Any:
    ids = tokens.to(torch.int32)[:, None].repeat(1, 2)
    if values is None:
        values = torch.zeros(ids.shape[0], dtype=torch.float32)
    return vllm_private.logprobs_tensors_cls()(
        logprob_token_ids=ids,
        logprobs=values[:, None].repeat(1, 2),
        selected_token_ranks=torch.ones(ids.shape[0], dtype=torch.int32),
    )
