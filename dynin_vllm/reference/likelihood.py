"""Reference masked-diffusion log-likelihood: LLaDA's Monte Carlo ELBO.

Written from LLaDA's published evaluation code (``eval_llada.py``:
``_forward_process`` and ``get_loglikelihood``), which lm-eval's
loglikelihood requests call for multiple-choice tasks. For a context ``c``
and a continuation ``t`` of ``L`` tokens:

1. ``mc_num`` samples are drawn in batches of ``batch_size`` copies of
   ``c + t``;
2. a batch draws one ``k`` uniformly in ``[1, L]`` and gives row ``i`` the
   masked count ``x_i = ((round(k + i * L / b) - 1) mod L) + 1``: masking
   ratios spread evenly over ``(0, 1]`` (stratified), as upstream;
3. each row masks ``x_i`` continuation positions chosen uniformly at random
   (the context is never masked);
4. a row's loss is the sum, over its masked positions, of the cross-entropy
   of the true token, divided by the masking ratio ``x_i / L``;
5. the estimate is minus the mean row loss over all ``mc_num`` rows.

It is a lower bound on ``log p(t | c)`` in expectation (the ELBO), exact for
``L = 1``. With ``cfg_scale > 0`` the logits are guided as in generation
(the unconditional rows mask the context), as upstream's ``get_logits``.

Randomness comes from :mod:`dynin_vllm.kernels.noise` (stream
``LIKELIHOOD``), indexed by ``(seed, batch, row)``: draw 0 picks ``k`` and
draws ``1..L`` rank the continuation positions (the ``x_i`` smallest are
masked, a uniformly random subset, as upstream's ``randperm``). So a seeded
estimate is reproducible draw for draw, whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dynin_vllm.kernels import noise
from dynin_vllm.reference.model import ReferenceLLaDA
from dynin_vllm.reference.sampler import MASK_ID


def masked_counts(k: int, length: int, batch_size: int) -> list[int]:
    """Upstream's stratified masked counts ``x_i`` of one batch (step 2)."""
    x = torch.round(
        torch.linspace(
            float(k), k + (batch_size - 1) * (length / batch_size), steps=batch_size
        )
    ).long()
    return (((x - 1) % length) + 1).tolist()


def draw_masks(seed: int, batch: int, length: int, batch_size: int) -> torch.Tensor:
    """``[batch_size, length]`` bool: the masked continuation positions of
    Monte Carlo batch ``batch`` (steps 2 and 3)."""
    u = noise.uniform_rows(
        torch.full((batch_size,), seed),
        noise.LIKELIHOOD,
        torch.full((batch_size,), batch),
        torch.arange(batch_size),
        length + 1,
    )
    k = 1 + min(int(u[0, 0] * length), length - 1)
    counts = torch.tensor(masked_counts(k, length, batch_size))
    ranks = u[:, 1:].argsort(dim=1).argsort(dim=1)  # rank of each position
    return ranks < counts[:, None]


def log_likelihood(
    model: ReferenceLLaDA,
    context: Sequence[int],
    continuation: Sequence[int],
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    cfg_scale: float = 0.0,
    mask_id: int = MASK_ID,
) -> float:
    """The Monte Carlo ELBO estimate of ``log p(continuation | context)``."""
    if not continuation:
        raise ValueError("continuation must not be empty")
    if mc_num < 1 or batch_size < 1 or mc_num % batch_size:
        raise ValueError("mc_num must be a positive multiple of batch_size")
    context, target = list(context), torch.tensor(list(continuation))
    length = target.numel()
    losses = []
    for batch in range(mc_num // batch_size):
        masked = draw_masks(seed, batch, length, batch_size)
        rows = torch.where(masked, mask_id, target[None, :])
        seqs = torch.cat([torch.tensor(context).repeat(batch_size, 1), rows], dim=1)
        logits = model.logits(seqs)[:, len(context) :].double()
        if cfg_scale > 0:
            uncond = seqs.clone()
            uncond[:, : len(context)] = mask_id
            un = model.logits(uncond)[:, len(context) :].double()
            logits = un + (cfg_scale + 1) * (logits - un)
        ce = F.cross_entropy(
            logits[masked], target[None, :].expand_as(masked)[masked], reduction="none"
        )
        ratio = (masked.sum(1, keepdim=True).double() / length).expand_as(masked)
        losses.append(float((ce / ratio[masked]).sum()) / batch_size)
    return -sum(losses) / len(losses)
