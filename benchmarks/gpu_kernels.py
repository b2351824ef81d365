"""Check the denoising-step Triton kernels on a GPU, then time them.

Usage (one H100/H200, a few minutes; vLLM need not be installed)::

    python benchmarks/gpu_kernels.py --out benchmarks/results/kernels_h100.json
    python benchmarks/gpu_kernels.py --dry-run   # CPU, TRITON_INTERPRET=1, tiny

1. Correctness on the device, before any timing (exit status 1 and a JSON
   with the failures if anything is off): the in-kernel noise against
   ``noise.py``; greedy row scoring bit-exact against ``score_rows_torch``
   (bf16/fp16/fp32, CFG both formulas, allowed ranges, ties, splits);
   sampled rows against the reference's draws and, by chi-square, against
   ``softmax(l/T)`` on a small and on the full vocabulary; commit and MaskGIT
   commit exact against their references.
2. Timings (CUDA events, warm-up, L2 flushed between repetitions, medians)
   of row scoring at (1, 16, 64 sequences) x (32, 256, 1024 canvas rows) x
   (vocab 138,752 and 8,192), bf16, temperature 0 and 1, for the Triton
   kernel, a good fp32 torch version, the float64 torch reference
   (``score_rows_torch``) and upstream-style float64 code, against the
   floor of reading the logits once at the measured device-to-device copy
   bandwidth; plus commit and MaskGIT commit. Slow references are skipped
   (and the skip recorded) when their predicted time exceeds ``--max-ref-s``.

Only torch, triton and ``dynin_vllm.kernels`` are imported (the installed
package, or the repository root on ``PYTHONPATH`` on a machine without an
install; ``import dynin_vllm`` imports nothing heavy); the script checks that
vLLM was not imported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    # Interpreted kernels compute 0 * inf in masked lanes (discarded).
    warnings.filterwarnings(
        "ignore", category=RuntimeWarning, module="triton.runtime.interpreter"
    )

import torch  # noqa: E402
import triton  # noqa: E402

from dynin_vllm.kernels import (  # noqa: E402
    maskgit,
    noise,
    scoring,
    selection,
)
from dynin_vllm.kernels import triton_ops as ops  # noqa: E402

VLLM_IMPORTED = any(n == "vllm" or n.startswith("vllm.") for n in sys.modules)

VOCAB_FULL = 138_752
VOCAB_IMAGE = 8_192
MASK_ID = 126_336


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
class Timer:
    """CUDA-event timing on a GPU, wall-clock on CPU (dry run)."""

    def __init__(self, device: torch.device, flush_bytes: int):
        self.device = device
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(flush_bytes, dtype=torch.uint8, device=device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of one call, L2 flushed before it."""
        self.flush.zero_()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start_s = time.perf_counter()
        fn()
        return (time.perf_counter() - start_s) * 1e3

    def measure(
        self,
        fn: Callable[[], Any],
        *,
        warmup: int = 2,
        target_ms: float = 300.0,
        min_reps: int = 3,
        max_reps: int = 30,
    ) -> dict[str, Any]:
        """Median of repetitions after warm-up (the first call compiles)."""
        self.sync()
        first = self.once(fn)
        estimate = first
        for _ in range(warmup - 1):
            estimate = self.once(fn)
        reps = max(min_reps, min(max_reps, int(target_ms / max(estimate, 1e-3))))
        times = [self.once(fn) for _ in range(reps)]
        return {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "reps": reps,
            "first_call_ms": first,
        }


def copy_bandwidth(timer: Timer, nbytes: int) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=timer.device)
    dst = torch.empty_like(src)
    src.fill_(1)
    result = timer.measure(lambda: dst.copy_(src), warmup=2, min_reps=5, max_reps=20)
    return 2 * nbytes / (result["median_ms"] * 1e-3)


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------
def torch_fp32_scores(
    logits: torch.Tensor, temperature: float, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A good fp32 torch version: fp32 argmax/logsumexp, Gumbel from torch's
    Philox generator, no float64 anywhere, chunked over rows."""
    rows = logits.shape[0]
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    conf = torch.empty(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, chunk_rows):
        x = logits[start : start + chunk_rows].float()
        lse = torch.logsumexp(x, dim=-1)
        if temperature > 0:
            u = torch.rand_like(x).clamp_(min=torch.finfo(torch.float32).tiny)
            key = x / temperature - torch.log(-torch.log(u))
            chosen = key.argmax(dim=-1)
        else:
            chosen = x.argmax(dim=-1)
        picked = x.gather(-1, chosen[:, None]).squeeze(-1)
        ids[start : start + chunk_rows] = chosen
        conf[start : start + chunk_rows] = torch.exp(picked - lse)
    return ids, conf


def upstream_f64_scores(
    logits: torch.Tensor, temperature: float, seqs: int, canvas: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream LLaDA/Dynin style, one request's canvas at a time: float64
    logits, ``exp(l) / (-log u)**T`` with float64 ``torch.rand`` noise,
    float64 softmax over the full vocabulary."""
    ids, confs = [], []
    for s in range(seqs):
        x = logits[s * canvas : (s + 1) * canvas].to(torch.float64)
        if temperature > 0:
            u = torch.rand_like(x)
            chosen = (x.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)
        else:
            chosen = x.argmax(dim=-1)
        p = torch.softmax(x, dim=-1)
        ids.append(chosen)
        confs.append(p.gather(-1, chosen[:, None]).squeeze(-1))
    return torch.cat(ids), torch.cat(confs)


# --------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------
class Checks:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def record(self, name: str, ok: bool, **detail: Any) -> None:
        self.results.append({"name": name, "ok": bool(ok), **detail})
        status = "ok  " if ok else "FAIL"
        print(f"  [{status}] {name} {detail if detail else ''}", flush=True)

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            detail = fn()
            self.record(name, detail.pop("ok"), **detail)
        except Exception as exc:  # a failed check, reported with the rest
            self.record(name, False, error=f"{type(exc).__name__}: {exc}")

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]


def _rows(n: int, gen: torch.Generator, device: torch.device):
    seed = torch.randint(-(2**62), 2**62, (n,), generator=gen).to(device)
    step = torch.randint(0, 1000, (n,), generator=gen).to(device)
    position = torch.randint(0, 4096, (n,), generator=gen).to(device)
    return seed, step, position


def _chi2_pvalue(stat: float, dof: int) -> float:
    return torch.special.gammaincc(
        torch.tensor(dof / 2, dtype=torch.float64),
        torch.tensor(stat / 2, dtype=torch.float64),
    ).item()


def check_noise(device: torch.device, width: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    same = True
    for stream in (noise.GUMBEL, noise.REMASK, noise.MASKGIT):
        seed, step, position = _rows(16, gen, device)
        got, _ = ops.uniform_triton(seed, stream, step, position, width)
        want = noise.uniform_rows(seed, stream, step, position, width)
        same &= torch.equal(got, want)
    return {"ok": same}


def check_exponential(device: torch.device) -> dict[str, Any]:
    top = (1 << 53) - 1
    ks = [0, 1, 2, 1000, (1 << 52) - 1, 1 << 52, (1 << 52) + 1]
    ks += [top - j for j in (0, 1, 2, 3, 1000, 1 << 20, 1 << 30, 1 << 40)]
    gen = torch.Generator().manual_seed(1)
    k = torch.cat(
        [torch.tensor(ks), torch.randint(0, 1 << 53, (100_000,), generator=gen)]
    )
    bits = (k << 11).to(device)
    got = ops.exponential32_triton(bits).double()
    u = (k.to(device).double() + 0.5) * 2.0**-53
    d = ((top - k).to(device).double() + 0.5) * 2.0**-53
    want = torch.where(k.to(device) < (1 << 52), -torch.log(u), -torch.log1p(-d))
    rel = ((got - want) / want).abs().max().item()
    return {"ok": rel < 5e-6 and bool(torch.isfinite(got).all()), "max_rel_err": rel}


def check_greedy(
    device: torch.device, vocab: int, rows: int, dtype: torch.dtype, full: bool
) -> dict[str, Any]:
    """Greedy rows, exact ids: plain, CFG (both formulas), ranges, ties; with
    ``full``, each under three launch variants (else the default launch, and
    fewer features: every variant is one more compilation)."""
    gen = torch.Generator().manual_seed(vocab + rows)
    cond = (3 * torch.randn(rows, vocab, generator=gen)).to(dtype)
    cond[: rows // 4] = cond[: rows // 4].round()  # many exact ties
    uncond = (3 * torch.randn(rows, vocab, generator=gen)).to(dtype)
    cond, uncond = cond.to(device), uncond.to(device)
    scale = torch.tensor([0.0, 1.5, 3.5, 0.3] * (rows // 4), device=device)
    tts = [[vocab - vocab // 32, vocab], [vocab // 2, vocab // 2 + 1], [7, 8]]
    allowed = torch.tensor(
        [[[0, vocab], [0, 0], [0, 0]], tts] * (rows // 2), device=device
    )
    temperature = torch.zeros(rows, device=device)
    seed, step, position = _rows(rows, gen, device)
    worst = 0.0
    mismatches = 0
    features = [
        {},
        {"uncond_logits": uncond, "cfg_scale": scale, "cfg_formula": "llada"},
        {"uncond_logits": uncond, "cfg_scale": scale, "cfg_formula": "maskgit"},
        {"allowed": allowed},
    ]
    launches = [
        {},
        {"splits": 1, "specialize": False},
        {"splits": 8, "specialize": True},
    ]
    if not full:
        features, launches = features[:2], launches[:1]
    for kwargs in features:
        want_ids, want_conf = scoring.score_rows_torch(
            cond, temperature, seed, step, position, **kwargs
        )
        for launch in launches:
            ids, conf = ops.score_rows_triton(
                cond, temperature, seed, step, position, **kwargs, **launch
            )
            mismatches += int((ids != want_ids).sum())
            rel = ((conf.double() - want_conf) / want_conf).abs().nan_to_num(0.0)
            worst = max(worst, rel.max().item())
    return {
        "ok": mismatches == 0 and worst < 3e-5,
        "id_mismatches": mismatches,
        "max_conf_rel_err": worst,
    }


def check_sampled_agreement(device: torch.device, vocab: int, rows: int):
    gen = torch.Generator().manual_seed(7)
    logits = (2 * torch.randn(rows, vocab, generator=gen)).to(torch.bfloat16)
    logits = logits.to(device)
    temperature = torch.tensor([0.0, 0.5, 1.0, 1.7] * (rows // 4), device=device)
    seed, step, position = _rows(rows, gen, device)
    ids, conf = ops.score_rows_triton(logits, temperature, seed, step, position)
    want, want_conf = scoring.score_rows_torch(
        logits, temperature, seed, step, position
    )
    greedy = temperature == 0
    agree = (ids == want).double().mean().item()
    same = ids == want
    rel = ((conf.double() - want_conf) / want_conf)[same].abs().max().item()
    ok = bool(torch.equal(ids[greedy], want[greedy])) and agree >= 0.99 and rel < 3e-5
    return {"ok": ok, "agreement": agree, "max_conf_rel_err": rel}


def _draw(logits_row, temperature, n, seed, device, **launch):
    logits = logits_row.to(device)[None, :].expand(n, -1)
    ids, _ = ops.score_rows_triton(
        logits,
        torch.full((n,), temperature, device=device),
        torch.full((n,), seed, dtype=torch.int64, device=device),
        torch.zeros(n, dtype=torch.int64, device=device),
        torch.arange(n, device=device),
        **launch,
    )
    return ids.cpu()


def check_distribution_small(device: torch.device, n: int) -> dict[str, Any]:
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.3, -3.0], dtype=torch.bfloat16)
    pvalues = {}
    for temperature in (0.5, 1.0, 2.0):
        counts = torch.bincount(_draw(row, temperature, n, 11, device), minlength=7)
        expected = n * torch.softmax(row.double() / temperature, dim=0)
        stat = (((counts.double() - expected) ** 2) / expected).sum().item()
        pvalues[str(temperature)] = _chi2_pvalue(stat, 6)
    return {"ok": min(pvalues.values()) > 1e-4, "p_values": pvalues, "draws": n}


def check_distribution_full_vocab(device: torch.device, n: int, vocab: int):
    """Equal-mass bins of softmax(l) over the whole vocabulary: the draws'
    frequencies, tails included, against the float64 probabilities."""
    gen = torch.Generator().manual_seed(3)
    row = (2 * torch.randn(vocab, generator=gen)).to(torch.bfloat16)
    probs = torch.softmax(row.double(), dim=0)
    order = torch.argsort(probs, descending=True)
    bins = 20
    cum = torch.cumsum(probs[order], 0) - probs[order]
    bin_of = torch.empty(vocab, dtype=torch.int64)
    bin_of[order] = (cum * bins).floor().clamp(max=bins - 1).long()
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_of, probs)
    ids = _draw(row, 1.0, n, 99, device)
    counts = torch.bincount(bin_of[ids], minlength=bins).double()
    keep = mass * n > 5
    expected = n * mass[keep] / mass[keep].sum()
    counts = counts[keep]
    stat = (((counts - expected) ** 2) / expected).sum().item()
    p = _chi2_pvalue(stat, int(keep.sum()) - 1)
    return {"ok": p > 1e-4, "p_value": p, "draws": n, "bins": int(keep.sum())}


def check_commit(device: torch.device, rows: int, width: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(width)
    editable = torch.rand(rows, width, generator=gen) < 0.6
    editable[0] = True
    editable[1] = False
    canvas = torch.randint(0, 50, (rows, width), generator=gen)
    canvas[editable] = MASK_ID
    cand = torch.randint(0, 50, (rows, width), generator=gen)
    levels = torch.tensor([-2.0, 0.05, 0.5, 0.5, 0.7, 0.9, 0.95, 1.0])
    conf = levels[torch.randint(0, 8, (rows, width), generator=gen)].double()
    k = torch.randint(0, width + 2, (rows,), generator=gen)
    rule = torch.arange(rows) % 3
    thr = torch.where(rule == 1, 0.8, 0.0).double()
    fac = torch.where(rule == 2, 1.0, 0.0).double()
    args = [t.to(device) for t in (cand, conf, editable, k, thr, fac)]
    ours, theirs = canvas.to(device), canvas.to(device)
    got = ops.commit_triton(ours, *args)
    want = selection.commit_torch(theirs, *args)
    ok = torch.equal(ours, theirs) and all(
        torch.equal(a, b) for a, b in zip(got, want, strict=True)
    )
    return {"ok": ok}


def check_maskgit(device: torch.device, rows: int, width: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(width + 1)
    editable = torch.rand(rows, width, generator=gen) < 0.7
    canvas = torch.randint(0, 8192, (rows, width), generator=gen)
    canvas[editable] = MASK_ID
    cand = torch.randint(0, 8192, (rows, width), generator=gen)
    probs = torch.rand(rows, width, generator=gen)
    probs[:, ::7] = 0.25  # ties
    mask_len = torch.randint(0, width, (rows,), generator=gen)
    temperature = torch.linspace(0, 1, rows, dtype=torch.float64)
    seed, step, position = _rows(rows, gen, torch.device("cpu"))
    args = [
        t.to(device)
        for t in (cand, probs, editable, mask_len, temperature, seed, step, position)
    ]
    ours, theirs = canvas.to(device), canvas.to(device)
    got = ops.maskgit_commit_triton(ours, *args)
    want = maskgit.maskgit_commit_torch(theirs, *args)
    ok = torch.equal(ours, theirs) and all(
        torch.equal(a, b) for a, b in zip(got, want, strict=True)
    )
    return {"ok": ok}


def run_checks(device: torch.device, dry: bool) -> Checks:
    checks = Checks()
    print("correctness:", flush=True)
    checks.record("vllm not imported", not VLLM_IMPORTED)
    checks.run(
        "noise: uniforms bit-exact", lambda: check_noise(device, 300 if dry else 5000)
    )
    checks.run("noise: float32 exponential tail", lambda: check_exponential(device))
    if dry:
        greedy = [(1031, 8, torch.bfloat16, True), (64, 8, torch.float16, False)]
    else:
        greedy = [
            (VOCAB_FULL, 64, torch.bfloat16, True),
            (1031, 64, torch.bfloat16, True),
        ]
        greedy += [(VOCAB_IMAGE, 256, d, False) for d in (torch.float16, torch.float32)]
    for vocab, rows, dtype, full in greedy:
        checks.run(
            f"greedy exact V={vocab} rows={rows} {str(dtype)[6:]}",
            lambda v=vocab, r=rows, d=dtype, f=full: check_greedy(device, v, r, d, f),
        )
    for vocab, rows in [(1031, 8)] if dry else [(VOCAB_FULL, 256), (VOCAB_IMAGE, 1024)]:
        checks.run(
            f"sampled draws agree V={vocab}",
            lambda v=vocab, r=rows: check_sampled_agreement(device, v, r),
        )
    checks.run(
        "sampling chi-square, 7 ids",
        lambda: check_distribution_small(device, 200 if dry else 200_000),
    )
    checks.run(
        "sampling chi-square, full vocab",
        lambda: check_distribution_full_vocab(
            device, 200 if dry else 16_384, 1031 if dry else VOCAB_FULL
        ),
    )
    for width in [5, 33] if dry else [32, 256, 1024]:
        checks.run(
            f"commit exact W={width}",
            lambda w=width: check_commit(device, 6 if dry else 64, w),
        )
    for width in [9] if dry else [441, 1024]:
        checks.run(
            f"maskgit exact W={width}",
            lambda w=width: check_maskgit(device, 4 if dry else 16, w),
        )
    return checks


# --------------------------------------------------------------------------
# Timings
# --------------------------------------------------------------------------
def time_scoring(args, timer: Timer, bandwidth: float, device: torch.device):
    dry = args.dry_run
    seqs_list = [1, 2] if dry else [1, 16, 64]
    canvas_list = [4, 8] if dry else [32, 256, 1024]
    vocabs = [1031, 64] if dry else [VOCAB_FULL, VOCAB_IMAGE]
    temps = [0.0, 1.0]
    max_rows = max(seqs_list) * max(canvas_list)
    gen = torch.Generator(device=device).manual_seed(0)
    per_element: dict[tuple[str, float], float] = {}  # ms per logit, to predict
    results = []
    started = time.perf_counter()
    for vocab in vocabs:
        buffer = torch.randn(
            max_rows, vocab, generator=gen, device=device, dtype=torch.bfloat16
        ).mul_(3)
        configs = sorted(
            [(s, c) for s in seqs_list for c in canvas_list],
            key=lambda sc: sc[0] * sc[1],
        )
        for seqs, canvas in configs:
            rows = seqs * canvas
            logits = buffer[:rows]
            nbytes = rows * vocab * logits.element_size()
            floor_ms = nbytes / bandwidth * 1e3
            seed = torch.arange(rows, device=device) * 7919
            step = torch.zeros(rows, dtype=torch.int64, device=device)
            position = torch.arange(rows, device=device) % canvas
            for temperature in temps:
                temp_t = torch.full((rows,), temperature, device=device)
                entry: dict[str, Any] = {
                    "seqs": seqs,
                    "canvas": canvas,
                    "vocab": vocab,
                    "rows": rows,
                    "temperature": temperature,
                    "bytes": nbytes,
                    "floor_ms": floor_ms,
                    "triton_splits": ops._auto_splits(
                        rows, triton.cdiv(vocab, ops.SCORE_BLOCK_V), device
                    ),
                }
                part = functools.partial
                impls: dict[str, Callable[[], Any]] = {
                    "triton": part(
                        ops.score_rows_triton, logits, temp_t, seed, step, position
                    ),
                    "torch_fp32": part(
                        torch_fp32_scores, logits, temperature, (1 << 29) // vocab + 1
                    ),
                    "torch_ref_f64": part(
                        scoring.score_rows_torch, logits, temp_t, seed, step, position
                    ),
                    "upstream_f64": part(
                        upstream_f64_scores, logits, temperature, seqs, canvas
                    ),
                }
                for name, fn in impls.items():
                    key = (name, temperature)
                    predicted = per_element.get(key, 0.0) * rows * vocab / 1e3
                    elapsed = time.perf_counter() - started
                    if name != "triton" and predicted > args.max_ref_s:
                        entry[name] = {
                            "skipped": f"predicted {predicted:.1f} s per call"
                        }
                        continue
                    if name != "triton" and elapsed > args.budget_s:
                        entry[name] = {"skipped": "time budget of the script spent"}
                        continue
                    try:
                        slow = predicted > 0.2
                        res = timer.measure(
                            fn,
                            warmup=1 if slow or dry else 2,
                            min_reps=1 if dry else (2 if slow else 3),
                            target_ms=50 if dry else 300,
                        )
                    except torch.OutOfMemoryError:
                        entry[name] = {"skipped": "out of memory"}
                        torch.cuda.empty_cache()
                        continue
                    res["x_floor"] = res["median_ms"] / floor_ms
                    entry[name] = res
                    per_element[key] = res["median_ms"] / (rows * vocab)
                results.append(entry)
                print(format_row(entry), flush=True)
        del buffer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def tune(args, timer: Timer, bandwidth: float, device: torch.device):
    """A small sweep of the scoring kernel's launch parameters."""
    dry = args.dry_run
    rows, vocab = (16, 1031) if dry else (16 * 1024, VOCAB_FULL)
    gen = torch.Generator(device=device).manual_seed(1)
    logits = torch.randn(
        rows, vocab, generator=gen, device=device, dtype=torch.bfloat16
    ).mul_(3)
    seed = torch.arange(rows, device=device)
    zero = torch.zeros(rows, dtype=torch.int64, device=device)
    floor_ms = logits.numel() * 2 / bandwidth * 1e3
    out = []
    blocks = [(64, 1), (128, 2)]
    if not dry:
        blocks = [(512, 2), (1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8)]
    for temperature in (0.0, 1.0):
        temp_t = torch.full((rows,), temperature, device=device)
        for block_v, warps in blocks:
            res = timer.measure(
                functools.partial(
                    ops.score_rows_triton,
                    logits,
                    temp_t,
                    seed,
                    zero,
                    zero,
                    block_v=block_v,
                    num_warps=warps,
                ),
                warmup=1 if dry else 2,
                min_reps=1 if dry else 3,
                target_ms=50 if dry else 200,
            )
            out.append(
                {
                    "rows": rows,
                    "vocab": vocab,
                    "temperature": temperature,
                    "block_v": block_v,
                    "num_warps": warps,
                    "median_ms": res["median_ms"],
                    "x_floor": res["median_ms"] / floor_ms,
                }
            )
            ratio = res["median_ms"] / floor_ms
            print(
                f"  tune T={temperature} block_v={block_v} warps={warps}: "
                f"{res['median_ms']:.3f} ms ({ratio:.2f}x floor)",
                flush=True,
            )
    return out


def time_selection(args, timer: Timer, device: torch.device):
    dry = args.dry_run
    out = []
    for seqs in [1, 2] if dry else [1, 16, 64]:
        for width in [8, 33] if dry else [32, 256, 1024]:
            gen = torch.Generator().manual_seed(seqs * width)
            canvas = torch.full((seqs, width), MASK_ID, device=device)
            cand = torch.randint(0, 1000, (seqs, width), generator=gen).to(device)
            conf = torch.rand(seqs, width, generator=gen).double().to(device)
            edit = torch.ones(seqs, width, dtype=torch.bool, device=device)
            k = torch.full((seqs,), max(1, width // 8), device=device)
            zero = torch.zeros(seqs, dtype=torch.float64, device=device)
            probs = conf.float()
            mask_len = torch.full((seqs,), width // 2, device=device)
            temp = torch.full((seqs,), 0.7, dtype=torch.float64, device=device)
            ids = torch.zeros(seqs, dtype=torch.int64, device=device)
            entry: dict[str, Any] = {"seqs": seqs, "width": width}
            commit_args = (cand, conf, edit, k, zero, zero)
            maskgit_args = (cand, probs, edit, mask_len, temp, ids, ids, ids)
            impls = {
                "commit_triton": (ops.commit_triton, commit_args),
                "commit_torch": (selection.commit_torch, commit_args),
                "maskgit_triton": (ops.maskgit_commit_triton, maskgit_args),
                "maskgit_torch": (maskgit.maskgit_commit_torch, maskgit_args),
            }
            for name, (fn, fn_args) in impls.items():
                entry[name] = timer.measure(
                    # canvas is written in place: a fresh copy per call
                    lambda f=fn, a=fn_args, c=canvas: f(c.clone(), *a),
                    warmup=1,
                    min_reps=1 if dry else 5,
                    target_ms=20 if dry else 100,
                )["median_ms"]
            out.append(entry)
            print(
                f"  seqs={seqs:3d} W={width:5d}  commit triton "
                f"{entry['commit_triton']:.3f} torch {entry['commit_torch']:.3f} ms"
                f" | maskgit triton {entry['maskgit_triton']:.3f}"
                f" torch {entry['maskgit_torch']:.3f} ms",
                flush=True,
            )
    return out


def _cell(res: dict[str, Any] | None) -> str:
    if res is None:
        return "-"
    if "skipped" in res:
        return "skip"
    return f"{res['median_ms']:.3f} ({res['x_floor']:.1f}x)"


def format_row(e: dict[str, Any]) -> str:
    return (
        f"  {e['seqs']:>3d} x {e['canvas']:>4d}  V={e['vocab']:>6d}"
        f"  T={e['temperature']:.0f}  floor {e['floor_ms']:.3f} ms"
        f" | triton {_cell(e.get('triton'))}"
        f" | fp32 torch {_cell(e.get('torch_fp32'))}"
        f" | f64 ref {_cell(e.get('torch_ref_f64'))}"
        f" | upstream f64 {_cell(e.get('upstream_f64'))}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU under TRITON_INTERPRET=1 at tiny shapes",
    )
    parser.add_argument(
        "--max-ref-s",
        type=float,
        default=3.0,
        help="skip baselines predicted to be slower per call",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="seconds of timing, then baselines are skipped",
    )
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()

    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    card = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu-interpreter"
    )
    report: dict[str, Any] = {
        "schema": 1,
        "mode": "dry-run" if args.dry_run else "gpu",
        "device": card,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "vllm_imported": VLLM_IMPORTED,
        "defaults": {"block_v": ops.SCORE_BLOCK_V, "num_warps": ops.SCORE_WARPS},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["sms"] = props.multi_processor_count
        report["memory_gib"] = props.total_memory / 2**30
    print(f"device: {card}, torch {torch.__version__}, triton {triton.__version__}")

    checks = run_checks(device, args.dry_run)
    report["correctness"] = checks.results
    if checks.failed:
        report["status"] = "correctness failed"
        write(report, args.out)
        print(
            f"{len(checks.failed)} correctness check(s) FAILED; no timings taken",
            file=sys.stderr,
        )
        return 1

    if not args.skip_timing:
        timer = Timer(device, (1 << 20) if args.dry_run else (256 << 20))
        bandwidth = copy_bandwidth(timer, (16 << 20) if args.dry_run else (2 << 30))
        report["copy_bandwidth_gbs"] = bandwidth / 1e9
        report["l2_flushed_between_reps"] = True
        print(f"device-to-device copy: {bandwidth / 1e9:.0f} GB/s (read + write)")
        print("tuning (scoring kernel launch parameters):", flush=True)
        report["tuning"] = tune(args, timer, bandwidth, device)
        print("row scoring (ms, median; x = multiple of the HBM floor):", flush=True)
        report["score_rows"] = time_scoring(args, timer, bandwidth, device)
        print("selection (ms, median):", flush=True)
        report["selection"] = time_selection(args, timer, device)
    report["status"] = "ok"
    report["wall_s"] = time.perf_counter() - started
    write(report, args.out)
    print(f"done in {report['wall_s']:.0f} s")
    return 0


def write(report: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
