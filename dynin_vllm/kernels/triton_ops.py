"""Triton kernels for the per-step denoising math.

Each public function has the signature of its plain-torch reference and is
tested against it (``tests/kernels``, on CPU under ``TRITON_INTERPRET=1``):

- :func:`score_rows_triton` ~ ``scoring.score_rows_torch``: one pass over the
  vocabulary per row (online max / sum of exponentials / argmax, tiled over
  the vocabulary, optionally split over several programs and combined), CFG
  and allowed-id ranges applied on the fly, Gumbel-max noise generated in the
  kernel from the counter-based generator of ``dynin_vllm.kernels.noise``.
  Greedy rows (temperature 0) choose exactly the reference's id (CFG in
  float64 as the reference does, ties to the lowest id); the confidence is
  computed in float32. Sampled rows draw the same uniforms as the reference
  but form the Gumbel keys in float32, so they are equal in distribution and
  agree with the reference draw except at float32 near-ties.
- :func:`commit_triton` ~ ``selection.commit_torch``: exact, ties included.
- :func:`maskgit_commit_triton` ~ ``maskgit.maskgit_commit_torch``: exact up
  to the last bit of float64 ``log`` (CUDA's libdevice vs the host's libm).
- :func:`uniform_triton` and :func:`exponential32_triton` expose the in-kernel
  generator for tests.

Kernels whose results must match torch's rounding (CFG, MaskGIT confidences,
the factor rule's bars) are compiled with floating-point contraction off, so
``a*b + c`` rounds twice, as torch's separate operations do.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import noise
from .scoring import CFG_LLADA, CFG_MASKGIT

_MASK64 = (1 << 64) - 1

# SplitMix64 constants of ``noise`` as unsigned 64-bit values.
_GOLDEN = 0x9E3779B97F4A7C15
_K_MIX1 = tl.constexpr(0xBF58476D1CE4E5B9)
_K_MIX2 = tl.constexpr(0x94D049BB133111EB)
_K_GOLDEN = tl.constexpr(_GOLDEN)
_K_STEP = tl.constexpr(0xABC98388FB8FAC03)
_K_POS = tl.constexpr(0x8CB92BA72F3D8DD7)
_STREAM = 0xD1B54A32D192ED03


def _interpreting() -> bool:
    """Whether ``@triton.jit`` makes interpreted functions (as at decoration)."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # Triton before knobs
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _InterpretedLogs:
    """Stands in for libdevice in the interpreter (which has none); looked
    up at call time because the interpreter patches ``tl.log`` per launch."""

    @property
    def fast_logf(self):
        return tl.log


# ``_logs.fast_logf``: lg2.approx-based log on the GPU (its absolute error,
# ~1e-7, is what the exponential and Gumbel values tolerate).
_logs = _InterpretedLogs() if _interpreting() else libdevice
_LOG2E = tl.constexpr(1.4426950408889634)
_F32_LOWEST = tl.constexpr(-3.4028234663852886e38)

#: Vocabulary tile of the scoring kernel and its warps (8 bf16 per thread).
SCORE_BLOCK_V = 1024
SCORE_WARPS = 4
#: Tiles of the pairwise-ranking loops of the selection kernels.
RANK_BLOCK = 64


def _stream_offset(stream: int) -> int:
    """``stream * _STREAM`` modulo 2**64, the row-key offset of a stream."""
    return (stream * _STREAM) & _MASK64


# --------------------------------------------------------------------------
# Counter-based generator (same 64-bit arithmetic as ``noise``)
# --------------------------------------------------------------------------
@triton.jit
def _mix64(x):
    """SplitMix64's output function on uint64 values."""
    x = (x ^ (x >> 30)) * _K_MIX1
    x = (x ^ (x >> 27)) * _K_MIX2
    return x ^ (x >> 31)


@triton.jit
def _row_key(seed, step, position, STREAM_OFFSET: tl.constexpr):
    """``noise.row_keys`` of int64 ``seed``, ``step``, ``position`` (uint64)."""
    key = _mix64(seed.to(tl.uint64, bitcast=True) + STREAM_OFFSET)
    key = _mix64(key ^ (step.to(tl.uint64, bitcast=True) * _K_STEP))
    return _mix64(key ^ (position.to(tl.uint64, bitcast=True) * _K_POS))


@triton.jit
def _uniform64(bits):
    """``noise.uniform``'s float64 value from the mixed 64-bit word."""
    return ((bits >> 11).to(tl.float64) + 0.5) * (2.0**-53)


@triton.jit
def _exponential32(bits):
    """``-log(u)`` in float32 for the float64 uniform ``u`` of ``bits``.

    Rounding ``u`` to float32 would send the 2**28 uniforms closest to 1 to
    exactly 1 (an infinite Gumbel value) and cut the Gumbel tail at about 17
    instead of 37 (arXiv 2409.02908). So ``q = min(u, 1 - u)`` is formed from
    the integer, ``-log(q)`` for ``u < 1/2``, else ``-log1p(-q)``: a series
    for ``q < 1/16`` and ``-log(1 - q)`` (no cancellation there) above.
    """
    k = bits >> 11  # u = (k + 0.5) * 2**-53
    low = k < (1 << 52)
    q = (tl.where(low, k, (1 << 53) - 1 - k).to(tl.float32) + 0.5) * (2.0**-53)
    log_arg = _logs.fast_logf(tl.where(low, q, 1.0 - q))
    series = q * (1.0 + q * (0.5 + q * (1.0 / 3.0 + q * (0.25 + q * 0.2))))
    return tl.where(low | (q >= 0.0625), -log_arg, series)


@triton.jit
def _uniform_kernel(
    seed_ptr,
    step_ptr,
    pos_ptr,
    out_ptr,
    exp_ptr,
    width,
    STREAM_OFFSET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < width
    key = _row_key(
        tl.load(seed_ptr + row),
        tl.load(step_ptr + row),
        tl.load(pos_ptr + row),
        STREAM_OFFSET,
    )
    bits = _mix64(key + (offs + 1).to(tl.uint64) * _K_GOLDEN)
    out = row.to(tl.int64) * width + offs
    tl.store(out_ptr + out, _uniform64(bits), mask=inb)
    tl.store(exp_ptr + out, _exponential32(bits), mask=inb)


def uniform_triton(
    seed: torch.Tensor,
    stream: int,
    step: torch.Tensor,
    position: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' noise: ``([rows, width] float64 u, float32 -log(u))``.

    ``u`` equals ``noise.uniform_rows(seed, stream, step, position, width)``
    bit for bit; the second tensor is what the scoring kernel derives from it.
    """
    rows = seed.shape[0]
    out = torch.empty(rows, width, dtype=torch.float64, device=seed.device)
    expo = torch.empty(rows, width, dtype=torch.float32, device=seed.device)
    if rows == 0 or width == 0:
        return out, expo
    block = min(1024, triton.next_power_of_2(width))
    _uniform_kernel[(rows, triton.cdiv(width, block))](
        seed.to(torch.int64).contiguous(),
        step.to(torch.int64).contiguous(),
        position.to(torch.int64).contiguous(),
        out,
        expo,
        width,
        STREAM_OFFSET=_stream_offset(stream),
        BLOCK=block,
        enable_fp_fusion=False,
    )
    return out, expo


@triton.jit
def _exponential_kernel(bits_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bits = tl.load(bits_ptr + offs, mask=offs < n, other=0).to(tl.uint64, bitcast=True)
    tl.store(out_ptr + offs, _exponential32(bits), mask=offs < n)


def exponential32_triton(bits: torch.Tensor) -> torch.Tensor:
    """float32 ``-log(u)`` of raw 64-bit words (int64), as the scoring kernel
    derives it from ``u = noise.uniform``'s value of the same word."""
    bits = bits.to(torch.int64).contiguous()
    out = torch.empty(bits.shape, dtype=torch.float32, device=bits.device)
    if bits.numel():
        block = min(1024, triton.next_power_of_2(bits.numel()))
        _exponential_kernel[(triton.cdiv(bits.numel(), block),)](
            bits, out, bits.numel(), BLOCK=block, enable_fp_fusion=False
        )
    return out


# --------------------------------------------------------------------------
# Row scoring
# --------------------------------------------------------------------------
@triton.jit
def _score_scan(
    lrow,
    urow,
    scale,
    use_cfg,
    lo,
    hi,
    temp32,
    key0,
    t_start,
    t_stop,
    V,
    HOT: tl.constexpr,
    HAS_CFG: tl.constexpr,
    MASKGIT_CFG: tl.constexpr,
    HAS_RANGES: tl.constexpr,
    BLOCK: tl.constexpr,
    CTR_STEP: tl.constexpr,
):
    """Per-lane running statistics over vocabulary tiles ``[t_start, t_stop)``.

    Returns per lane: the running max ``m`` (float32; the lowest finite
    float32 until a finite logit), the sum of ``exp(x - m)``, the best key
    (float64 with CFG: exact argmax of the float64 guided logits; float32
    otherwise, where the upcast bf16/fp16/fp32 logits are exact), its id and
    its float32 logit.
    """
    lane = tl.arange(0, BLOCK)
    if HAS_CFG:
        best_key = tl.full([BLOCK], float("-inf"), tl.float64)
    else:
        best_key = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK], 2147483647, tl.int32)
    best_x = tl.full([BLOCK], float("-inf"), tl.float32)
    # The lowest finite float32, not -inf: ``exp(-inf - -inf)`` would be NaN,
    # and every finite logit still compares greater.
    run_max = tl.full([BLOCK], _F32_LOWEST, tl.float32)
    run_sum = tl.zeros([BLOCK], tl.float32)
    if HOT:
        ctr = key0 + (t_start * BLOCK + lane + 1).to(tl.uint64) * _K_GOLDEN
    for t in range(t_start, t_stop):
        offs = t * BLOCK + lane
        inb = offs < V
        c = tl.load(lrow + offs, mask=inb, other=float("-inf"))
        if HAS_CFG:
            c64 = c.to(tl.float64)
            # (``where``, not ``inb & use_cfg``: the interpreter cannot AND a
            # block with a loaded scalar's comparison.)
            need_u = tl.where(use_cfg, inb, False)
            u64 = tl.load(urow + offs, mask=need_u, other=0.0).to(tl.float64)
            # Same operations, in the same order, as ``scoring.guide``.
            if MASKGIT_CFG:
                guided = (1.0 + scale) * c64 - scale * u64
            else:
                guided = u64 + (scale + 1.0) * (c64 - u64)
            x = tl.where(use_cfg, guided, c64)
        else:
            x = c.to(tl.float32)
        if HAS_RANGES:
            keep = (offs[:, None] >= lo[None, :]) & (offs[:, None] < hi[None, :])
            keep = tl.max(keep.to(tl.int32), axis=1) > 0
            x = tl.where(keep & inb, x, float("-inf"))
        else:
            x = tl.where(inb, x, float("-inf"))
        x32 = x.to(tl.float32)

        # Online sum of exponentials with one exp2 per element.
        up = x32 > run_max
        d = tl.exp2(tl.where(up, run_max - x32, x32 - run_max) * _LOG2E)
        run_sum = tl.where(up, run_sum * d + 1.0, run_sum + d)
        run_max = tl.where(up, x32, run_max)

        if HOT:
            # argmax exp(l) / E**T == argmax l - T*log(E), E = -log(u).
            key = x32 - temp32 * _logs.fast_logf(_exponential32(_mix64(ctr)))
            ctr += CTR_STEP
            better = key.to(best_key.dtype) > best_key  # strict: lowest id on ties
            best_key = tl.where(better, key.to(best_key.dtype), best_key)
            best_idx = tl.where(better, offs, best_idx)
            best_x = tl.where(better, x32, best_x)
        elif HAS_CFG:
            better = x > best_key  # the float64 guided logits
            best_key = tl.where(better, x, best_key)
            best_idx = tl.where(better, offs, best_idx)
            best_x = tl.where(better, x32, best_x)
        else:
            # Plain argmax: the running max is the best key (exact upcasts).
            best_idx = tl.where(up, offs, best_idx)
    if not HOT and not HAS_CFG:
        seen = best_idx != 2147483647
        best_key = tl.where(seen, run_max, float("-inf"))
        best_x = tl.where(seen, run_max, float("-inf"))
    return run_max, run_sum, best_key, best_idx, best_x


@triton.jit
def _score_kernel(
    logits_ptr,
    uncond_ptr,
    scale_ptr,
    temp_ptr,
    seed_ptr,
    step_ptr,
    pos_ptr,
    allowed_ptr,
    ids_ptr,
    conf_ptr,
    part_max_ptr,
    part_sum_ptr,
    part_key_ptr,
    part_idx_ptr,
    part_x_ptr,
    V,
    stride_l,
    stride_u,
    stride_a,
    col_offset,
    HAS_CFG: tl.constexpr,
    MASKGIT_CFG: tl.constexpr,
    NUM_RANGES: tl.constexpr,
    RANGES_PAD: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK: tl.constexpr,
    CTR_STEP: tl.constexpr,
    STREAM_OFFSET: tl.constexpr,
    ROWS: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    row64 = row.to(tl.int64)
    lrow = logits_ptr + row64 * stride_l
    urow = uncond_ptr + row64 * stride_u

    # The vocabulary window: the hull of the row's allowed ranges, in tiles.
    if NUM_RANGES > 0:
        r = tl.arange(0, RANGES_PAD)
        aptr = allowed_ptr + row64 * stride_a + r * 2
        lo = tl.load(aptr, mask=r < NUM_RANGES, other=0)
        hi = tl.load(aptr + 1, mask=r < NUM_RANGES, other=0)
        lo = tl.minimum(tl.maximum(lo, 0), V).to(tl.int32)
        hi = tl.minimum(tl.maximum(hi, 0), V).to(tl.int32)
        nonempty = hi > lo
        hi = tl.where(nonempty, hi, 0)  # padding and inverted ranges keep nothing
        win_lo = tl.min(tl.where(nonempty, lo, V), axis=0)
        win_hi = tl.max(hi, axis=0)
        tile_lo = win_lo // BLOCK
        tile_hi = tl.maximum(tl.cdiv(win_hi, BLOCK), tile_lo)
    else:
        lo = tl.zeros([2], tl.int32)
        hi = tl.zeros([2], tl.int32)
        tile_lo = 0
        tile_hi = tl.cdiv(V, BLOCK)
    per_split = tl.cdiv(tile_hi - tile_lo, SPLITS)
    t_start = tile_lo + split * per_split
    t_stop = tl.minimum(t_start + per_split, tile_hi)

    if HAS_CFG:
        scale = tl.load(scale_ptr + row).to(tl.float64)
        use_cfg = scale > 0
    else:
        scale = 0.0
        use_cfg = False
    temp = tl.load(temp_ptr + row).to(tl.float64)
    hot = temp > 0
    # ROWS 0 branches per row; 1 and 2 are the greedy-only and sampled-only
    # specialisations (fewer registers each), launched as a pair.
    if ROWS == 0:
        if hot:
            _score_row(
                lrow, urow, scale, use_cfg, lo, hi, temp, seed_ptr, step_ptr,
                pos_ptr, row, row64, split, t_start, t_stop, V, col_offset, ids_ptr,
                conf_ptr,
                part_max_ptr, part_sum_ptr, part_key_ptr, part_idx_ptr, part_x_ptr,
                True, HAS_CFG, MASKGIT_CFG, NUM_RANGES > 0, SPLITS, BLOCK,
                CTR_STEP, STREAM_OFFSET,
            )  # fmt: skip
        else:
            _score_row(
                lrow, urow, scale, use_cfg, lo, hi, temp, seed_ptr, step_ptr,
                pos_ptr, row, row64, split, t_start, t_stop, V, col_offset, ids_ptr,
                conf_ptr,
                part_max_ptr, part_sum_ptr, part_key_ptr, part_idx_ptr, part_x_ptr,
                False, HAS_CFG, MASKGIT_CFG, NUM_RANGES > 0, SPLITS, BLOCK,
                CTR_STEP, STREAM_OFFSET,
            )  # fmt: skip
    elif ROWS == 1:
        if not hot:
            _score_row(
                lrow, urow, scale, use_cfg, lo, hi, temp, seed_ptr, step_ptr,
                pos_ptr, row, row64, split, t_start, t_stop, V, col_offset, ids_ptr,
                conf_ptr,
                part_max_ptr, part_sum_ptr, part_key_ptr, part_idx_ptr, part_x_ptr,
                False, HAS_CFG, MASKGIT_CFG, NUM_RANGES > 0, SPLITS, BLOCK,
                CTR_STEP, STREAM_OFFSET,
            )  # fmt: skip
    else:
        if hot:
            _score_row(
                lrow, urow, scale, use_cfg, lo, hi, temp, seed_ptr, step_ptr,
                pos_ptr, row, row64, split, t_start, t_stop, V, col_offset, ids_ptr,
                conf_ptr,
                part_max_ptr, part_sum_ptr, part_key_ptr, part_idx_ptr, part_x_ptr,
                True, HAS_CFG, MASKGIT_CFG, NUM_RANGES > 0, SPLITS, BLOCK,
                CTR_STEP, STREAM_OFFSET,
            )  # fmt: skip


@triton.jit
def _score_row(
    lrow,
    urow,
    scale,
    use_cfg,
    lo,
    hi,
    temp,
    seed_ptr,
    step_ptr,
    pos_ptr,
    row,
    row64,
    split,
    t_start,
    t_stop,
    V,
    col_offset,
    ids_ptr,
    conf_ptr,
    part_max_ptr,
    part_sum_ptr,
    part_key_ptr,
    part_idx_ptr,
    part_x_ptr,
    HOT: tl.constexpr,
    HAS_CFG: tl.constexpr,
    MASKGIT_CFG: tl.constexpr,
    HAS_RANGES: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK: tl.constexpr,
    CTR_STEP: tl.constexpr,
    STREAM_OFFSET: tl.constexpr,
):
    """Scan one row's share of the vocabulary and store its result."""
    if HOT:
        key0 = _row_key(
            tl.load(seed_ptr + row),
            tl.load(step_ptr + row),
            tl.load(pos_ptr + row),
            STREAM_OFFSET,
        )
        # Logits that start at vocabulary column ``col_offset``: draw the
        # noise of the vocabulary columns (draw i is key + (i+1)*golden).
        key0 = key0 + tl.cast(col_offset, tl.uint64) * _K_GOLDEN
    else:
        key0 = 0
    run_max, run_sum, best_key, best_idx, best_x = _score_scan(
        lrow, urow, scale, use_cfg, lo, hi, temp.to(tl.float32), key0,
        t_start, t_stop, V,
        HOT, HAS_CFG, MASKGIT_CFG, HAS_RANGES, BLOCK, CTR_STEP,
    )  # fmt: skip
    top = tl.max(run_max, axis=0)
    total = tl.sum(run_sum * tl.exp2((run_max - top) * _LOG2E), axis=0)
    key = tl.max(best_key, axis=0)
    idx = tl.min(tl.where(best_key == key, best_idx, 2147483647), axis=0)
    x = tl.max(tl.where(best_idx == idx, best_x, float("-inf")), axis=0)
    if SPLITS == 1:
        # No finite key at all (nothing allowed): torch.argmax answers 0.
        tl.store(ids_ptr + row, tl.where(idx == 2147483647, 0, idx).to(tl.int64))
        tl.store(conf_ptr + row, tl.exp(x - top) / total)
    else:
        part = row64 * SPLITS + split
        tl.store(part_max_ptr + part, top)
        tl.store(part_sum_ptr + part, total)
        tl.store(part_key_ptr + part, key.to(tl.float64))
        tl.store(part_idx_ptr + part, idx)
        tl.store(part_x_ptr + part, x)


@triton.jit
def _score_combine_kernel(
    ids_ptr,
    conf_ptr,
    part_max_ptr,
    part_sum_ptr,
    part_key_ptr,
    part_idx_ptr,
    part_x_ptr,
    SPLITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS)
    part = row * SPLITS + s
    run_max = tl.load(part_max_ptr + part)
    run_sum = tl.load(part_sum_ptr + part)
    best_key = tl.load(part_key_ptr + part)
    best_idx = tl.load(part_idx_ptr + part)
    best_x = tl.load(part_x_ptr + part)
    top = tl.max(run_max, axis=0)
    total = tl.sum(run_sum * tl.exp(run_max - top), axis=0)
    key = tl.max(best_key, axis=0)
    idx = tl.min(tl.where(best_key == key, best_idx, 2147483647), axis=0)
    x = tl.max(tl.where(best_idx == idx, best_x, float("-inf")), axis=0)
    tl.store(ids_ptr + row, tl.where(idx == 2147483647, 0, idx).to(tl.int64))
    tl.store(conf_ptr + row, tl.exp(x - top) / total)


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _auto_splits(rows: int, tiles: int, device: torch.device) -> int:
    """Splits of each row's vocabulary so the grid fills the GPU (power of 2)."""
    want = triton.cdiv(4 * _num_sms(device), max(rows, 1))
    splits = 1
    while splits < want and splits * 2 <= max(tiles, 1) and splits < 256:
        splits *= 2
    return splits


def _per_row(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A per-row float vector as the kernels read it (converted in-kernel)."""
    if not values.is_floating_point():
        values = values.to(torch.float64)
    return values.to(device).contiguous()


def score_rows_triton(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
    *,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: torch.Tensor | None = None,
    cfg_formula: str = CFG_LLADA,
    allowed: torch.Tensor | None = None,
    column_offset: int = 0,
    splits: int | None = None,
    block_v: int = SCORE_BLOCK_V,
    num_warps: int = SCORE_WARPS,
    specialize: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``score_rows``: ``(ids [N] int64, conf [N] float32)``.

    Arguments as ``scoring.score_rows_torch``. Launch tuning: ``splits`` (a
    power of two; default: enough programs to fill the GPU), ``block_v``,
    ``num_warps``, and ``specialize`` (two launches, greedy rows and sampled
    rows, each compiled for its kind: the greedy kernel needs far fewer
    registers; default: on for grids of several waves). Logits may be bf16,
    fp16 or fp32 with unit stride in the vocabulary dimension (other layouts
    are copied).
    """
    if cfg_formula not in (CFG_LLADA, CFG_MASKGIT):
        raise ValueError(f"unknown cfg formula {cfg_formula!r}")
    num_rows, vocab = logits.shape
    device = logits.device
    ids = torch.empty(num_rows, dtype=torch.int64, device=device)
    conf = torch.empty(num_rows, dtype=torch.float32, device=device)
    if num_rows == 0:
        return ids, conf
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    has_cfg = uncond_logits is not None and cfg_scale is not None
    if has_cfg:
        if uncond_logits.stride(-1) != 1:
            uncond_logits = uncond_logits.contiguous()
        uncond, stride_u = uncond_logits, uncond_logits.stride(0)
        scale = _per_row(cfg_scale, device)
    else:
        uncond, stride_u, scale = logits, 0, logits  # placeholders, never read
    if allowed is not None and allowed.shape[1] > 0:
        ranges = allowed.to(device=device, dtype=torch.int64)
        if column_offset:
            ranges = (ranges - column_offset).clamp(min=0)
        ranges = ranges.contiguous()
        num_ranges = ranges.shape[1]
        stride_a = ranges.stride(0)
    else:
        # No ranges (or an empty ``[N, 0, 2]``, which the reference treats as
        # "nothing allowed") ...
        ranges, num_ranges, stride_a = ids, 0, 0
        if allowed is not None:
            ids.zero_()
            conf.fill_(float("nan"))
            return ids, conf
    temp = _per_row(temperature, device)
    seed = seed.to(device=device, dtype=torch.int64).contiguous()
    step = step.to(device=device, dtype=torch.int64).contiguous()
    position = position.to(device=device, dtype=torch.int64).contiguous()

    tiles = triton.cdiv(vocab, block_v)
    if splits is None:
        splits = _auto_splits(num_rows, tiles, device)
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"splits must be a power of two, got {splits}")
    if splits > 1:
        parts = num_rows * splits
        part_max = torch.empty(parts, dtype=torch.float32, device=device)
        part_sum = torch.empty(parts, dtype=torch.float32, device=device)
        part_key = torch.empty(parts, dtype=torch.float64, device=device)
        part_idx = torch.empty(parts, dtype=torch.int32, device=device)
        part_x = torch.empty(parts, dtype=torch.float32, device=device)
    else:
        part_max = part_sum = part_key = part_idx = part_x = conf
    if specialize is None:
        specialize = num_rows * splits >= 8 * _num_sms(device)
    for rows_mode in (1, 2) if specialize else (0,):
        _score_kernel[(num_rows, splits)](
            logits,
            uncond,
            scale,
            temp,
            seed,
            step,
            position,
            ranges,
            ids,
            conf,
            part_max,
            part_sum,
            part_key,
            part_idx,
            part_x,
            vocab,
            logits.stride(0),
            stride_u,
            stride_a,
            column_offset,
            HAS_CFG=has_cfg,
            MASKGIT_CFG=cfg_formula == CFG_MASKGIT,
            NUM_RANGES=num_ranges,
            RANGES_PAD=max(2, triton.next_power_of_2(max(num_ranges, 1))),
            SPLITS=splits,
            BLOCK=block_v,
            CTR_STEP=(block_v * _GOLDEN) & _MASK64,
            STREAM_OFFSET=_stream_offset(noise.GUMBEL),
            ROWS=rows_mode,
            num_warps=num_warps,
            # Contraction would round the float64 CFG differently from torch.
            enable_fp_fusion=not has_cfg,
        )
    if splits > 1:
        _score_combine_kernel[(num_rows,)](
            ids, conf, part_max, part_sum, part_key, part_idx, part_x,
            SPLITS=splits, num_warps=1, enable_fp_fusion=False,
        )  # fmt: skip
    if column_offset:
        ids += column_offset
    return ids, conf


# --------------------------------------------------------------------------
# Selection and commit
# --------------------------------------------------------------------------
@triton.jit
def _load_conf(conf_row, edit_row, offs, W):
    """float64 confidences of a tile, ``-inf`` where not editable or outside."""
    inb = offs < W
    conf = tl.load(conf_row + offs, mask=inb, other=float("-inf")).to(tl.float64)
    edit = tl.load(edit_row + offs, mask=inb, other=0) != 0
    return tl.where(edit & inb, conf, float("-inf")), edit & inb


@triton.jit
def _count_tile(
    ci,
    offs_i,
    conf_row,
    edit_row,
    W,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    LESS_EQUAL: tl.constexpr,
):
    """Per position ``i`` of a tile, a count over every position ``j`` in the row.

    ``LESS_EQUAL=False``: positions ranked before ``i`` in the stable
    descending order (greater confidence, or equal and lower position), i.e.
    ``i``'s rank. ``LESS_EQUAL=True``: editable positions with confidence
    ``<= ci``.
    """
    count = tl.zeros([BLOCK_I], tl.int32)
    for j0 in range(0, W, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        cj, ej = _load_conf(conf_row, edit_row, offs_j, W)
        a = cj[None, :]
        b = ci[:, None]
        if LESS_EQUAL:
            hit = (a <= b) & ej[None, :]
        else:
            hit = (a > b) | ((a == b) & (offs_j[None, :] < offs_i[:, None]))
            hit = hit & (offs_j < W)[None, :]
        count += tl.sum(hit.to(tl.int32), axis=1)
    return count


@triton.jit
def _count_editable(edit_row, W, BLOCK_I: tl.constexpr):
    """Editable (still-masked) positions of one canvas row."""
    lane = tl.arange(0, BLOCK_I)
    count = 0
    for i0 in range(0, W, BLOCK_I):
        offs = i0 + lane
        e = tl.load(edit_row + offs, mask=offs < W, other=0) != 0
        count += tl.sum(e.to(tl.int32), axis=0)
    return count


@triton.jit
def _commit_kernel(
    canvas_ptr,
    cand_ptr,
    conf_ptr,
    edit_ptr,
    ntr_ptr,
    thr_ptr,
    fac_ptr,
    ncom_ptr,
    done_ptr,
    W,
    stride_canvas,
    stride_cand,
    stride_conf,
    stride_edit,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    conf_row = conf_ptr + row * stride_conf
    edit_row = edit_ptr + row * stride_edit
    lane = tl.arange(0, BLOCK_I)

    num_editable = _count_editable(edit_row, W, BLOCK_I)

    threshold = tl.load(thr_ptr + row).to(tl.float64)
    factor = tl.load(fac_ptr + row).to(tl.float64)
    count = tl.load(ntr_ptr + row).to(tl.int32)
    if factor > 0:
        # First sorted index i < num_editable with c_i < 1 - factor/(i+2)
        # (the best one's bar is -1); a failure at the last index, or none,
        # commits all of them.
        first_fail = num_editable
        for i0 in range(0, W, BLOCK_I):
            offs = i0 + lane
            ci, ei = _load_conf(conf_row, edit_row, offs, W)
            rank = _count_tile(ci, offs, conf_row, edit_row, W, BLOCK_I, BLOCK_J, False)
            bar = 1.0 - factor / (rank.to(tl.float64) + 2.0)
            bar = tl.where(rank == 0, -1.0, bar)
            fail = (ci < bar) & (rank < num_editable) & (offs < W)
            first_fail = tl.minimum(
                first_fail, tl.min(tl.where(fail, rank, num_editable), axis=0)
            )
        count = tl.where(first_fail >= num_editable - 1, num_editable, first_fail)
    use_threshold = (threshold > 0) & (factor <= 0)

    committed = 0
    left = 0
    for i0 in range(0, W, BLOCK_I):
        offs = i0 + lane
        inb = offs < W
        ci, ei = _load_conf(conf_row, edit_row, offs, W)
        rank = _count_tile(ci, offs, conf_row, edit_row, W, BLOCK_I, BLOCK_J, False)
        sel = tl.where(use_threshold, (rank == 0) | (ci >= threshold), rank < count)
        sel = sel & ei
        cand = tl.load(cand_ptr + row * stride_cand + offs, mask=sel, other=0)
        tl.store(canvas_ptr + row * stride_canvas + offs, cand, mask=sel & inb)
        committed += tl.sum(sel.to(tl.int32), axis=0)
        left += tl.sum((ei & ~sel).to(tl.int32), axis=0)
    tl.store(ncom_ptr + row, committed.to(tl.int64))
    tl.store(done_ptr + row, (left == 0).to(tl.int8))


def _rows_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _commit_results(canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed per-request commit counts and done flags (all done if empty)."""
    rows = canvas.shape[0]
    num_committed = torch.zeros(rows, dtype=torch.int64, device=canvas.device)
    done = torch.ones(rows, dtype=torch.bool, device=canvas.device)
    return num_committed, done


def commit_triton(
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    num_transfer: torch.Tensor,
    threshold: torch.Tensor,
    factor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``commit``: same arguments and results as ``commit_torch``.

    Writes ``canvas`` (int64 ``[R, W]``) in place; one program per request
    ranks its positions pairwise (``O(W**2)``, exact ties by position).
    """
    num_committed, done = _commit_results(canvas)
    rows, width = canvas.shape
    device = canvas.device
    if rows == 0 or width == 0:
        return num_committed, done
    target = canvas if canvas.stride(-1) == 1 else canvas.contiguous()
    candidates = _rows_major(candidates.to(canvas.dtype))
    confidence = _rows_major(confidence)
    edit = _rows_major(editable.to(torch.bool)).view(torch.uint8)
    block = min(RANK_BLOCK, triton.next_power_of_2(width))
    _commit_kernel[(rows,)](
        target,
        candidates,
        confidence,
        edit,
        num_transfer.to(device=device, dtype=torch.int64).contiguous(),
        threshold.to(device=device, dtype=torch.float64).contiguous(),
        factor.to(device=device, dtype=torch.float64).contiguous(),
        num_committed,
        done.view(torch.int8),
        width,
        target.stride(0),
        candidates.stride(0),
        confidence.stride(0),
        edit.stride(0),
        BLOCK_I=block,
        BLOCK_J=block,
        num_warps=4,
        enable_fp_fusion=False,
    )
    if target is not canvas:
        canvas.copy_(target)
    return num_committed, done


# --------------------------------------------------------------------------
# MaskGIT re-masking
# --------------------------------------------------------------------------
@triton.jit
def _maskgit_conf_kernel(
    probs_ptr,
    edit_ptr,
    temp_ptr,
    seed_ptr,
    step_ptr,
    pos_ptr,
    out_ptr,
    W,
    stride_p,
    stride_e,
    BLOCK: tl.constexpr,
    STREAM_OFFSET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < W
    p = tl.load(probs_ptr + row * stride_p + offs, mask=inb, other=1.0)
    edit = tl.load(edit_ptr + row * stride_e + offs, mask=inb, other=0) != 0
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    position = tl.load(pos_ptr + row) + offs
    key = _row_key(seed, step, position, STREAM_OFFSET)
    u = _uniform64(_mix64(key + _K_GOLDEN))  # draw 0 of each position's key
    gumbel = -tl.log(-tl.log(u))
    temp = tl.load(temp_ptr + row).to(tl.float64)
    conf = tl.log(tl.maximum(p.to(tl.float64), 1e-20)) + temp * gumbel
    conf = tl.where(edit, conf, float("inf"))
    tl.store(out_ptr + row * W + offs, conf, mask=inb)


@triton.jit
def _maskgit_commit_kernel(
    canvas_ptr,
    cand_ptr,
    conf_ptr,
    edit_ptr,
    len_ptr,
    ncom_ptr,
    done_ptr,
    W,
    stride_canvas,
    stride_cand,
    stride_edit,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    conf_row = conf_ptr + row * W
    edit_row = edit_ptr + row * stride_edit
    lane = tl.arange(0, BLOCK_I)
    num_editable = _count_editable(edit_row, W, BLOCK_I)
    mask_len = tl.load(len_ptr + row).to(tl.int32)
    keep_masked = tl.maximum(1, tl.minimum(num_editable - 1, mask_len))
    commit_all = mask_len <= 0

    committed = 0
    for i0 in range(0, W, BLOCK_I):
        offs = i0 + lane
        inb = offs < W
        ci = tl.load(conf_row + offs, mask=inb, other=float("inf"))
        ei = tl.load(edit_row + offs, mask=inb, other=0) != 0
        # conf_i < cut  <=>  #{j : conf_j <= conf_i} <= mask_len
        below = _count_tile(ci, offs, conf_row, edit_row, W, BLOCK_I, BLOCK_J, True)
        sel = ei & tl.where(commit_all, True, below > keep_masked)
        cand = tl.load(cand_ptr + row * stride_cand + offs, mask=sel, other=0)
        tl.store(canvas_ptr + row * stride_canvas + offs, cand, mask=sel & inb)
        committed += tl.sum(sel.to(tl.int32), axis=0)
    tl.store(ncom_ptr + row, committed.to(tl.int64))
    tl.store(done_ptr + row, (committed == num_editable).to(tl.int8))


def maskgit_confidence_triton(
    probs: torch.Tensor,
    editable: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Triton ``maskgit.maskgit_confidence_torch`` (float64 ``[R, W]``)."""
    rows, width = probs.shape
    device = probs.device
    out = torch.empty(rows, width, dtype=torch.float64, device=device)
    if rows == 0 or width == 0:
        return out
    probs = _rows_major(probs)
    edit = _rows_major(editable.to(torch.bool)).view(torch.uint8)
    block = min(1024, triton.next_power_of_2(width))
    _maskgit_conf_kernel[(rows, triton.cdiv(width, block))](
        probs,
        edit,
        temperature.to(device=device, dtype=torch.float64).contiguous(),
        seed.to(device=device, dtype=torch.int64).contiguous(),
        step.to(device=device, dtype=torch.int64).contiguous(),
        position.to(device=device, dtype=torch.int64).contiguous(),
        out,
        width,
        probs.stride(0),
        edit.stride(0),
        BLOCK=block,
        STREAM_OFFSET=_stream_offset(noise.MASKGIT),
        enable_fp_fusion=False,
    )
    return out


def maskgit_commit_triton(
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    editable: torch.Tensor,
    mask_len: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    position: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``maskgit.maskgit_commit_torch``: same arguments and results."""
    num_committed, done = _commit_results(canvas)
    rows, width = canvas.shape
    device = canvas.device
    if rows == 0 or width == 0:
        return num_committed, done
    conf = maskgit_confidence_triton(
        confidence, editable, temperature, seed, step, position
    )
    target = canvas if canvas.stride(-1) == 1 else canvas.contiguous()
    candidates = _rows_major(candidates.to(canvas.dtype))
    edit = _rows_major(editable.to(torch.bool)).view(torch.uint8)
    block = min(RANK_BLOCK, triton.next_power_of_2(width))
    _maskgit_commit_kernel[(rows,)](
        target,
        candidates,
        conf,
        edit,
        mask_len.to(device=device, dtype=torch.int64).contiguous(),
        num_committed,
        done.view(torch.int8),
        width,
        target.stride(0),
        candidates.stride(0),
        edit.stride(0),
        BLOCK_I=block,
        BLOCK_J=block,
        num_warps=4,
        enable_fp_fusion=False,
    )
    if target is not canvas:
        canvas.copy_(target)
    return num_committed, done


__all__ = [
    "commit_triton",
    "exponential32_triton",
    "maskgit_commit_triton",
    "maskgit_confidence_triton",
    "score_rows_triton",
    "uniform_triton",
]
