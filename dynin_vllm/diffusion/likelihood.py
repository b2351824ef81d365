"""Masked-diffusion log-likelihood of a continuation, one Monte Carlo row at a time.

A likelihood request scores the last ``L`` tokens of its prompt (the
continuation ``t``) given the tokens before them (the context ``c``) with
LLaDA's Monte Carlo ELBO (``dynin_vllm.reference.likelihood``, from LLaDA's
``eval_llada.py``): ``mc_num`` rows, drawn in stratified groups of
``mc_batch_size``; row ``r`` masks a random subset ``M_r`` of ``x_r``
continuation positions, and the estimate is

    ELBO = -(1/mc_num) * sum_r sum_{j in M_r} CE_r(j) * L / x_r

where ``CE_r(j)`` is the cross-entropy of ``t_j`` at position ``j`` of the
forward of ``c + row_r``. The double sum splits by position: position ``j``'s
*share* is ``-(1/mc_num) * sum_{r : j in M_r} CE_r(j) * L / x_r``, and the
shares add up to the estimate. The engine reports the shares as the
continuation's prompt logprobs, so any client that sums a continuation's
logprobs (lm-eval's loglikelihood requests) gets the ELBO.

Each row is one forward of exactly ``c + row_r`` (attention is bidirectional,
so no KV carries over between rows). :class:`LikelihoodState` holds a
request's progress: which row is next, its tokens, and the running shares.
Its draws are the same counter-based function of ``(seed, group, row)`` as
the reference's, so a seeded estimate does not depend on the batch it ran
in, or on preemption.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynin_vllm.kernels import noise


def stratified_counts(k: int, length: int, group_size: int) -> torch.Tensor:
    """Masked counts of one group's rows: ``k`` then evenly spaced steps of
    ``length / group_size``, wrapped into ``[1, length]`` (LLaDA's
    ``_forward_process``)."""
    spaced = torch.linspace(
        float(k), k + (group_size - 1) * (length / group_size), steps=group_size
    )
    counts = torch.round(spaced).long()
    return (counts - 1) % length + 1


def group_masks(seed: int, group: int, length: int, group_size: int) -> torch.Tensor:
    """``[group_size, length]`` bool: the masked continuation positions of
    every row of Monte Carlo group ``group``.

    Per row, draw 0 of row 0 picks the group's ``k`` uniformly in
    ``[1, length]``; draws ``1..length`` rank the positions, and a row masks
    its ``x_r`` lowest-ranked ones (a uniformly random subset).
    """
    rows = torch.arange(group_size)
    u = noise.uniform_rows(
        torch.full_like(rows, seed),
        noise.LIKELIHOOD,
        torch.full_like(rows, group),
        rows,
        length + 1,
    )
    k = min(int(u[0, 0].item() * length), length - 1) + 1
    counts = stratified_counts(k, length, group_size)
    order = u[:, 1:].argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(length).expand(group_size, length))
    return ranks < counts[:, None]


@dataclass
class LikelihoodState:
    """Monte Carlo progress of one likelihood request."""

    req_id: str
    prompt: torch.Tensor  # [prompt_len] int64: context then continuation
    start: int  # prompt index of the continuation's first token
    mc_num: int
    group_size: int
    seed: int
    mask_id: int
    row: int = 0  # the next row to forward
    shares: torch.Tensor = field(init=False)  # float64 [L], running sums
    _group: int = field(default=-1, init=False)
    _group_masks: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.shares = torch.zeros(self.length, dtype=torch.float64)

    @property
    def length(self) -> int:
        return self.prompt.numel() - self.start

    @property
    def target(self) -> torch.Tensor:
        return self.prompt[self.start :]

    @property
    def finished(self) -> bool:
        return self.row >= self.mc_num

    def row_mask(self) -> torch.Tensor:
        """``[L]`` bool: the continuation positions the next row masks."""
        group, index = divmod(self.row, self.group_size)
        if group != self._group:
            self._group = group
            self._group_masks = group_masks(
                self.seed, group, self.length, self.group_size
            )
        assert self._group_masks is not None
        return self._group_masks[index]

    def row_tokens(self) -> torch.Tensor:
        """``[L]`` int64: the continuation as the next row shows it."""
        return torch.where(self.row_mask(), self.mask_id, self.target)

    def masked_positions(self) -> torch.Tensor:
        """Prompt indices of the next row's masked positions (ascending)."""
        return self.row_mask().nonzero().flatten() + self.start

    def add_row(self, cross_entropy: torch.Tensor) -> None:
        """Account the next row: ``cross_entropy`` holds the true token's
        cross-entropy at each of :meth:`masked_positions`, in order."""
        masked = self.row_mask()
        weight = self.length / int(masked.sum())
        self.shares[masked] -= cross_entropy.to(torch.float64).cpu() * weight
        self.row += 1

    def estimate_shares(self) -> torch.Tensor:
        """float64 ``[L]``: each continuation position's share of the ELBO
        over the rows so far (they sum to the estimate)."""
        return self.shares / max(self.row, 1)
