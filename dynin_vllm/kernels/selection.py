"""Selection and commit: choose which masked positions to unmask this step.

Plain-torch reference implementation. ``dynin_vllm.kernels.commit`` dispatches
between this and the Triton kernel with the same signature.

Per request (row), over its *editable* positions (still masked and inside the
active block), ordered by confidence (ties: lower position first):

- fixed schedule (LLaDA): commit the ``k`` most confident;
- ``threshold > 0`` (Fast-dLLM): commit the most confident, plus every other
  position whose confidence is ``>= threshold``;
- ``factor > 0`` (Fast-dLLM factor rule): with sorted confidences
  ``c_0 >= c_1 >= ...`` and ``t_i = 1 - factor / (i + 2)`` (``t_0 = -1``),
  commit the ``n`` most confident, where ``n`` is the first index failing
  ``c_i >= t_i``; a failure at the last index, or none, commits all (as
  upstream does).
"""

from __future__ import annotations

import torch


def select_torch(
    confidence: torch.Tensor,
    editable: torch.Tensor,
    num_transfer: torch.Tensor,
    threshold: torch.Tensor,
    factor: torch.Tensor,
) -> torch.Tensor:
    """Boolean ``[R, W]`` mask of the positions to commit.

    ``threshold`` / ``factor`` rows that are ``<= 0`` are off; ``factor`` wins
    over ``threshold``, which wins over ``num_transfer``.
    """
    conf = confidence.to(torch.float64).masked_fill(~editable, float("-inf"))
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(
        1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order)
    )
    num_editable = editable.sum(dim=1)

    sorted_conf = conf.gather(1, order)
    idx = torch.arange(conf.shape[1], device=conf.device, dtype=torch.float64)
    bar = 1.0 - factor.to(torch.float64)[:, None] / (idx[None, :] + 2.0)
    bar[:, 0] = -1.0
    fails = (sorted_conf < bar) & (idx[None, :] < num_editable[:, None])
    first_fail = torch.where(
        fails.any(dim=1), fails.to(torch.int8).argmax(dim=1), num_editable
    )
    by_factor = torch.where(first_fail >= num_editable - 1, num_editable, first_fail)

    count = torch.where(factor > 0, by_factor, num_transfer.to(by_factor.dtype))
    selected = rank < count[:, None]
    by_threshold = (rank == 0) | (conf >= threshold.to(torch.float64)[:, None])
    use_threshold = (threshold > 0) & ~(factor > 0)
    selected = torch.where(use_threshold[:, None], by_threshold, selected)
    return selected & editable


def commit_torch(
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    num_transfer: torch.Tensor,
    threshold: torch.Tensor,
    factor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit the selected candidates into ``canvas`` in place.

    Returns ``(num_committed [R], done [R])``: ``done`` means no editable
    position is left after this step.
    """
    selected = select_torch(confidence, editable, num_transfer, threshold, factor)
    canvas.copy_(torch.where(selected, candidates, canvas))
    num_committed = selected.sum(dim=1)
    done = (editable & ~selected).sum(dim=1) == 0
    return num_committed, done
