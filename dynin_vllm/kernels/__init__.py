"""Denoising-step kernels, installed as ``dynin_vllm.kernels``.

Each operation has a plain-torch reference (``scoring.py``, ``selection.py``,
``maskgit.py``) and, where written, a Triton kernel with the same signature
(``triton_ops.py``). The functions here dispatch: Triton on CUDA, torch
elsewhere, except the selection of host tensors, which runs in numpy
(``selection.commit_numpy``: the same result, a fraction of the dispatch
cost on the few rows of a step).

``DYNIN_VLLM_KERNELS`` overrides the choice: ``torch`` forces the references
(debugging), ``triton`` forces the kernels (with ``TRITON_INTERPRET=1`` they
run on CPU, which is how CI tests them).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from .maskgit import annealed_temperature, cosine_mask_len, maskgit_commit_torch
from .scoring import CFG_LLADA, CFG_MASKGIT, random_confidence_torch, score_rows_torch
from .selection import commit_numpy, commit_torch

ENV = "DYNIN_VLLM_KERNELS"


def _triton_module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


def use_triton(device: torch.device) -> bool:
    """Whether the Triton kernels serve tensors on ``device``."""
    choice = os.environ.get(ENV, "auto")
    if choice == "torch":
        return False
    if choice == "triton":
        return True
    if choice != "auto":
        raise ValueError(f"{ENV} must be 'auto', 'torch' or 'triton', got {choice!r}")
    return device.type == "cuda" and _triton_module("triton_ops") is not None


def _kernels() -> Any:
    ops = _triton_module("triton_ops")
    if ops is None:
        raise RuntimeError(f"{ENV}=triton but the Triton kernels are unavailable")
    return ops


def score_rows(logits: torch.Tensor, *args: Any, **kwargs: Any):
    """Chosen ids and confidences of canvas rows (see ``scoring.score_rows_torch``).

    The Triton kernel returns float32 confidences, the reference float64.
    """
    if use_triton(logits.device):
        return _kernels().score_rows_triton(logits, *args, **kwargs)
    return score_rows_torch(logits, *args, **kwargs)


def commit(canvas: torch.Tensor, *args: Any, **kwargs: Any):
    """Select and commit positions in place (see ``selection.commit_torch``)."""
    if use_triton(canvas.device):
        return _kernels().commit_triton(canvas, *args, **kwargs)
    if canvas.device.type == "cpu" and os.environ.get(ENV, "auto") == "auto":
        return commit_numpy(canvas, *args, **kwargs)
    return commit_torch(canvas, *args, **kwargs)


def maskgit_commit(canvas: torch.Tensor, *args: Any, **kwargs: Any):
    """One MaskGIT re-masking step in place (see ``maskgit.maskgit_commit_torch``)."""
    if use_triton(canvas.device):
        return _kernels().maskgit_commit_triton(canvas, *args, **kwargs)
    return maskgit_commit_torch(canvas, *args, **kwargs)


def random_confidence(seed: torch.Tensor, step: torch.Tensor, position: torch.Tensor):
    """Uniform confidences for ``remasking="random"``."""
    return random_confidence_torch(seed, step, position)


__all__ = [
    "CFG_LLADA",
    "CFG_MASKGIT",
    "annealed_temperature",
    "commit",
    "cosine_mask_len",
    "maskgit_commit",
    "random_confidence",
    "score_rows",
    "use_triton",
]
