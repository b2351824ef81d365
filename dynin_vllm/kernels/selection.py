"""Selection and commit: choose which masked positions to unmask this step.

Plain-torch reference implementation, and its numpy twin for host tensors.
``dynin_vllm.kernels.commit`` dispatches between them and the Triton kernel
with the same signature.

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

import numpy as np
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
    use_factor = factor > 0
    use_threshold = (threshold > 0) & ~use_factor
    if not bool((use_factor | use_threshold).any()):  # the fixed schedule alone
        return (rank < num_transfer[:, None]) & editable
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

    count = torch.where(use_factor, by_factor, num_transfer.to(by_factor.dtype))
    selected = rank < count[:, None]
    by_threshold = (rank == 0) | (conf >= threshold.to(torch.float64)[:, None])
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


def select_numpy(
    confidence: np.ndarray,
    editable: np.ndarray,
    num_transfer: np.ndarray,
    threshold: np.ndarray,
    factor: np.ndarray,
) -> np.ndarray:
    """:func:`select_torch` in numpy, for host arrays: the same positions,
    ties included, at a fraction of the cost on the few rows a step has."""
    conf = np.where(editable, confidence.astype(np.float64), -np.inf)
    # A stable ascending sort of the negated confidences is torch's stable
    # descending sort: equal confidences keep the lower position first.
    order = np.argsort(-conf, axis=1, kind="stable")
    width = conf.shape[1]
    rank = np.empty_like(order)
    rank[np.arange(conf.shape[0])[:, None], order] = np.arange(width)
    use_factor = factor > 0
    use_threshold = (threshold > 0) & ~use_factor
    if not (use_factor.any() or use_threshold.any()):  # the fixed schedule alone
        return (rank < num_transfer[:, None]) & editable
    num_editable = editable.sum(axis=1)

    sorted_conf = np.take_along_axis(conf, order, 1)
    idx = np.arange(width, dtype=np.float64)
    bar = 1.0 - factor.astype(np.float64)[:, None] / (idx[None, :] + 2.0)
    bar[:, 0] = -1.0
    fails = (sorted_conf < bar) & (idx[None, :] < num_editable[:, None])
    first_fail = np.where(fails.any(axis=1), fails.argmax(axis=1), num_editable)
    by_factor = np.where(first_fail >= num_editable - 1, num_editable, first_fail)

    count = np.where(use_factor, by_factor, num_transfer)
    selected = rank < count[:, None]
    by_threshold = (rank == 0) | (conf >= threshold.astype(np.float64)[:, None])
    selected = np.where(use_threshold[:, None], by_threshold, selected)
    return selected & editable


def commit_numpy(
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    num_transfer: torch.Tensor,
    threshold: torch.Tensor,
    factor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`commit_torch` for CPU tensors, computed in numpy on views of
    them (a step's selection is a few dozen tiny operations, each far cheaper
    in numpy than a torch dispatch)."""
    canvas_np = canvas.numpy()
    editable_np = editable.numpy()
    selected = select_numpy(
        confidence.numpy(),
        editable_np,
        num_transfer.numpy(),
        threshold.numpy(),
        factor.numpy(),
    )
    np.copyto(canvas_np, candidates.numpy(), where=selected)
    num_committed = selected.sum(axis=1)
    done = (editable_np & ~selected).sum(axis=1) == 0
    return torch.from_numpy(num_committed), torch.from_numpy(done)
