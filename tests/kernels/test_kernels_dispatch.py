"""``dynin_vllm.kernels`` picks Triton on CUDA, torch elsewhere, or as told."""

from __future__ import annotations

import pytest
import torch

from dynin_vllm import kernels
from dynin_vllm.kernels.selection import commit_torch


@pytest.fixture
def calls(ops, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records which Triton entry points the dispatchers call."""
    seen: list[str] = []
    for name in ("score_rows_triton", "commit_triton", "maskgit_commit_triton"):
        real = getattr(ops, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    return seen


def _score_args():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen).to(torch.bfloat16)
    z = torch.zeros(4, dtype=torch.int64)
    return logits, torch.zeros(4), z, z, torch.arange(4)


def _commit_args():
    canvas = torch.full((2, 5), 9)
    cand = torch.arange(10).view(2, 5)
    conf = torch.rand(2, 5, generator=torch.Generator().manual_seed(1)).double()
    edit = torch.ones(2, 5, dtype=torch.bool)
    zero = torch.zeros(2, dtype=torch.float64)
    return canvas, cand, conf, edit, torch.tensor([2, 3]), zero, zero


def _maskgit_args():
    canvas = torch.full((2, 5), 9)
    cand = torch.arange(10).view(2, 5)
    probs = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))
    edit = torch.ones(2, 5, dtype=torch.bool)
    z = torch.zeros(2, dtype=torch.int64)
    return (
        canvas,
        cand,
        probs,
        edit,
        torch.tensor([2, 0]),
        torch.ones(2).double(),
        z,
        z,
        z,
    )


def _run_all() -> torch.dtype:
    _, conf = kernels.score_rows(*_score_args())
    kernels.commit(*_commit_args())
    kernels.maskgit_commit(*_maskgit_args())
    return conf.dtype


def test_auto_uses_torch_on_cpu(calls, monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV, "auto")
    assert _run_all() == torch.float64
    assert calls == []
    assert not kernels.use_triton(torch.device("cpu"))
    assert kernels.use_triton(torch.device("cuda"))  # the module imports


def test_forced_triton(calls, monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV, "triton")
    assert _run_all() == torch.float32
    assert calls == ["score_rows_triton", "commit_triton", "maskgit_commit_triton"]


def test_forced_torch(calls, monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV, "torch")
    assert not kernels.use_triton(torch.device("cuda"))
    assert _run_all() == torch.float64
    assert calls == []


def test_both_paths_agree(monkeypatch) -> None:
    results = {}
    for choice in ("torch", "triton"):
        monkeypatch.setenv(kernels.ENV, choice)
        ids, _ = kernels.score_rows(*_score_args())
        args = _commit_args()
        counts = kernels.commit(*args)
        margs = _maskgit_args()
        mcounts = kernels.maskgit_commit(*margs)
        results[choice] = (ids, args[0], counts, margs[0], mcounts)
    for a, b in zip(results["torch"], results["triton"], strict=True):
        if isinstance(a, tuple):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        else:
            assert torch.equal(a, b)


def test_bad_choice(monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV, "cuda")
    with pytest.raises(ValueError):
        kernels.use_triton(torch.device("cpu"))


def test_host_selection_runs_in_numpy(monkeypatch) -> None:
    """On CPU, ``auto`` commits with the numpy twin (the result of the torch
    reference); ``torch`` forces the reference."""
    seen: list[str] = []
    real = kernels.commit_numpy

    def spy(*args, **kwargs):
        seen.append("numpy")
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "commit_numpy", spy)
    monkeypatch.setenv(kernels.ENV, "auto")
    args, ref_args = _commit_args(), _commit_args()
    got = kernels.commit(*args)
    want = commit_torch(*ref_args)
    assert seen == ["numpy"]
    assert torch.equal(args[0], ref_args[0])
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    monkeypatch.setenv(kernels.ENV, "torch")
    kernels.commit(*_commit_args())
    assert seen == ["numpy"]
