"""Triton row scoring against ``score_rows_torch``.

Greedy rows must choose the reference's id bit for bit (ties to the lowest id,
CFG in float64) with the confidence within float32 rounding; sampled rows
must follow the same distribution (chi-square tests against ``softmax(l/T)``
and against independent reference draws).
"""

from __future__ import annotations

import math

import pytest
import torch

from dynin_vllm.kernels.scoring import score_rows_torch

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
CONF_RTOL = 3e-5


def _rows(num_rows: int, gen: torch.Generator):
    seed = torch.randint(-(2**62), 2**62, (num_rows,), generator=gen)
    step = torch.randint(0, 1000, (num_rows,), generator=gen)
    position = torch.randint(0, 4096, (num_rows,), generator=gen)
    return seed, step, position


def _check_greedy(ops, logits, temperature, *rows, kwargs=None, **launch) -> None:
    kwargs = kwargs or {}
    ids, conf = ops.score_rows_triton(logits, temperature, *rows, **kwargs, **launch)
    ref_ids, ref_conf = score_rows_torch(logits, temperature, *rows, **kwargs)
    assert ids.dtype == torch.int64 and conf.dtype == torch.float32
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(
        conf.to(torch.float64), ref_conf, rtol=CONF_RTOL, atol=1e-30, equal_nan=True
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_rows", "vocab", "block_v", "splits"),
    [
        (1, 1, 64, 1),
        (5, 7, 64, 1),
        (13, 1031, 128, 1),
        (7, 1031, 128, 4),
        (3, 700, 64, 16),
    ],
)
def test_greedy_matches_reference(ops, dtype, num_rows, vocab, block_v, splits) -> None:
    gen = torch.Generator().manual_seed(vocab + num_rows)
    logits = (3 * torch.randn(num_rows, vocab, generator=gen)).to(dtype)
    temperature = torch.zeros(num_rows)
    rows = _rows(num_rows, gen)
    _check_greedy(ops, logits, temperature, *rows, block_v=block_v, splits=splits)


@pytest.mark.parametrize("splits", [1, 2, 8])
def test_greedy_ties_pick_the_lowest_id(ops, splits) -> None:
    """Equal maxima across lanes, tiles and splits: torch.argmax's first index."""
    vocab = 520
    gen = torch.Generator().manual_seed(3)
    # Few distinct values, so the maximum repeats many times per row.
    logits = torch.randint(-3, 3, (6, vocab), generator=gen).to(torch.bfloat16)
    logits[1] = 0
    logits[2, 300] = 9  # single maximum in a later tile
    logits[2, 511] = 9
    logits[3, :] = -5
    logits[3, [257, 130, 519]] = 4  # maximum first seen in a middle tile
    logits[4, -1] = 100  # the very last id
    logits[5] = -1e36  # huge negative logits are still logits
    logits[5, 77] = -5e35
    _check_greedy(
        ops, logits, torch.zeros(6), *_rows(6, gen), block_v=64, splits=splits
    )


def test_empty_batch(ops) -> None:
    logits = torch.zeros(0, 11, dtype=torch.bfloat16)
    empty = torch.zeros(0, dtype=torch.int64)
    ids, conf = ops.score_rows_triton(logits, torch.zeros(0), empty, empty, empty)
    ref_ids, _ = score_rows_torch(logits, torch.zeros(0), empty, empty, empty)
    assert ids.shape == ref_ids.shape == (0,) and conf.shape == (0,)


@pytest.mark.parametrize("formula", ["llada", "maskgit"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cfg_rows_mixed_with_plain_rows(ops, formula, dtype) -> None:
    num_rows, vocab = 9, 333
    gen = torch.Generator().manual_seed(11)
    cond = (2 * torch.randn(num_rows, vocab, generator=gen)).to(dtype)
    uncond = (2 * torch.randn(num_rows, vocab, generator=gen)).to(dtype)
    scale = torch.tensor([0.0, 1.5, 0.0, 3.5, 0.3, 0.0, 2.5, 0.7, -1.0])
    kwargs = {"uncond_logits": uncond, "cfg_scale": scale, "cfg_formula": formula}
    rows = _rows(num_rows, gen)
    _check_greedy(ops, cond, torch.zeros(num_rows), *rows, kwargs=kwargs, block_v=64)
    _check_greedy(
        ops, cond, torch.zeros(num_rows), *rows, kwargs=kwargs, block_v=64, splits=4
    )


def _float32_flips(formula: str) -> tuple[list[float], list[float], float]:
    """Two (cond, uncond) bf16 pairs whose guided logits order differently in
    float32 than in float64: only an exact float64 CFG picks the right id."""
    gen = torch.Generator().manual_seed(5)
    scale = torch.tensor(0.3)
    c = torch.randn(20000, generator=gen).to(torch.bfloat16)
    u = torch.randn(20000, generator=gen).to(torch.bfloat16)

    def guided(dt):
        s, cc, uu = scale.to(dt), c.to(dt), u.to(dt)
        if formula == "llada":
            return uu + (s + 1) * (cc - uu)
        return (1 + s) * cc - s * uu

    g64, g32 = guided(torch.float64), guided(torch.float32)
    order = torch.argsort(g64)
    for a, b in zip(order[:-1].tolist(), order[1:].tolist(), strict=True):
        # g64[b] > g64[a], but float32 thinks b <= a (tie or reversed).
        if g64[b] > g64[a] and g32[b] <= g32[a]:
            return [c[b].item(), c[a].item()], [u[b].item(), u[a].item()], 0.3
    raise AssertionError("no float32 flip found")


@pytest.mark.parametrize("formula", ["llada", "maskgit"])
def test_cfg_is_computed_in_float64(ops, formula) -> None:
    (cb, ca), (ub, ua), scale = _float32_flips(formula)
    vocab = 200
    cond = torch.full((2, vocab), -30.0, dtype=torch.bfloat16)
    uncond = torch.full((2, vocab), -30.0, dtype=torch.bfloat16)
    # Row 0: the float64 winner b comes after a; row 1: before it.
    for row, (ia, ib) in enumerate([(17, 150), (150, 17)]):
        cond[row, ia], uncond[row, ia] = ca, ua
        cond[row, ib], uncond[row, ib] = cb, ub
    kwargs = {
        "uncond_logits": uncond,
        "cfg_scale": torch.full((2,), scale),
        "cfg_formula": formula,
    }
    gen = torch.Generator().manual_seed(0)
    _check_greedy(ops, cond, torch.zeros(2), *_rows(2, gen), kwargs=kwargs, block_v=64)
    ids, _ = ops.score_rows_triton(cond, torch.zeros(2), *_rows(2, gen), **kwargs)
    assert ids.tolist() == [150, 17]


@pytest.mark.parametrize("splits", [1, 4])
def test_allowed_ranges_mixed_with_unrestricted_rows(ops, splits) -> None:
    num_rows, vocab = 8, 1000
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(num_rows, vocab, generator=gen).to(torch.bfloat16)
    logits[:, 5] = 50.0  # outside most ranges: must be excluded there
    pad = [7, 7]
    allowed = torch.tensor(
        [
            [[0, vocab], pad, pad],  # unrestricted
            [[600, 700], pad, pad],  # one window in the middle
            [[900, 1000], [100, 101], [33, 34]],  # TTS-like: codebook + 2 ids
            [pad, [0, vocab], pad],  # unrestricted, padding first
            [[3, 9], [990, 2000], pad],  # overlapping the vocabulary end
            [[300, 200], [-5, 2], pad],  # inverted range, negative start
            [[130, 131], pad, pad],  # a single id
            [pad, pad, pad],  # nothing allowed: id 0 and a NaN confidence
        ]
    )
    rows = _rows(num_rows, gen)
    _check_greedy(
        ops, logits, torch.zeros(num_rows), *rows, kwargs={"allowed": allowed},
        block_v=64, splits=splits,
    )  # fmt: skip
    ids, _ = ops.score_rows_triton(
        logits, torch.zeros(num_rows), *rows, allowed=allowed
    )
    assert ids[0] == 5 and 600 <= ids[1] < 700 and ids[6] == 130 and ids[7] == 0


@pytest.mark.parametrize("specialize", [False, True])
def test_cfg_and_ranges_and_temperatures_together(ops, specialize) -> None:
    num_rows, vocab = 10, 600
    gen = torch.Generator().manual_seed(21)
    cond = torch.randn(num_rows, vocab, generator=gen).to(torch.bfloat16)
    uncond = torch.randn(num_rows, vocab, generator=gen).to(torch.bfloat16)
    scale = torch.tensor([0, 2.5, 0, 3.5, 1, 0, 2, 0, 1, 0.5])
    allowed = torch.tensor([[[0, vocab]], [[100, 356]]] * 5)
    temperature = torch.tensor([0, 0, 1.0, 0.7, 0, 2.0, 0, 1.0, 0.2, 0])
    rows = _rows(num_rows, gen)
    kwargs = {
        "uncond_logits": uncond,
        "cfg_scale": scale,
        "cfg_formula": "maskgit",
        "allowed": allowed,
    }
    ids, conf = ops.score_rows_triton(
        cond, temperature, *rows, **kwargs, block_v=64, specialize=specialize
    )
    ref_ids, ref_conf = score_rows_torch(cond, temperature, *rows, **kwargs)
    # Same uniforms: the sampled rows draw the reference's ids too (a float32
    # near-tie of the two best keys would be needed to differ).
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(conf.double(), ref_conf, rtol=CONF_RTOL, atol=0)


def test_non_contiguous_inputs(ops) -> None:
    gen = torch.Generator().manual_seed(4)
    wide = torch.randn(6, 300, generator=gen).to(torch.float16)
    logits = wide[:, :257]  # row stride 300
    uncond = torch.randn(12, 257, generator=gen).to(torch.float16)[::2]
    kwargs = {"uncond_logits": uncond, "cfg_scale": torch.tensor([0, 1.0] * 3)}
    _check_greedy(
        ops, logits, torch.zeros(6), *_rows(6, gen), kwargs=kwargs, block_v=64
    )


def test_sampled_rows_agree_with_reference_draws(ops) -> None:
    """Mixed temperatures in one batch; the same counter-based uniforms."""
    num_rows, vocab = 64, 300
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(num_rows, vocab, generator=gen).to(torch.bfloat16)
    temperature = torch.tensor([0.0, 0.3, 1.0, 1.7] * 16)
    rows = _rows(num_rows, gen)
    ids, conf = ops.score_rows_triton(logits, temperature, *rows, block_v=64, splits=2)
    ref_ids, ref_conf = score_rows_torch(logits, temperature, *rows)
    greedy = temperature == 0
    assert torch.equal(ids[greedy], ref_ids[greedy])
    assert (ids == ref_ids).float().mean().item() >= 0.98
    same = ids == ref_ids
    torch.testing.assert_close(
        conf[same].double(), ref_conf[same], rtol=CONF_RTOL, atol=0
    )
    # Sampling differs from greedy decoding for most hot rows.
    assert (ids[~greedy] != logits[~greedy].float().argmax(-1)).any()


def _chi2_pvalue(stat: float, dof: int) -> float:
    return torch.special.gammaincc(
        torch.tensor(dof / 2, dtype=torch.float64),
        torch.tensor(stat / 2, dtype=torch.float64),
    ).item()


def _chi2_fit(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of ``counts`` against category probabilities ``probs``."""
    expected = counts.sum() * probs
    stat = (((counts - expected) ** 2) / expected).sum().item()
    return _chi2_pvalue(stat, counts.numel() - 1)


def _chi2_two_sample(a: torch.Tensor, b: torch.Tensor) -> float:
    """p-value of "``a`` and ``b`` are counts of the same distribution"."""
    table = torch.stack([a, b])
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    keep = expected[0] > 0
    stat = (((table - expected) ** 2)[:, keep] / expected[:, keep]).sum().item()
    return _chi2_pvalue(stat, int(keep.sum()) - 1)


LOGITS_ROW = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.3, -3.0], dtype=torch.bfloat16)
KERNEL_DRAWS = 1000  # each draw is one interpreted program (~10 ms)


def _draws(score, logits_row: torch.Tensor, temperature: float, n: int, seed: int):
    """``n`` independent draws: one row per draw, distinct noise positions."""
    logits = logits_row[None, :].expand(n, -1)
    seeds = torch.full((n,), seed, dtype=torch.int64)
    step = torch.full((n,), 3, dtype=torch.int64)
    position = torch.arange(n, dtype=torch.int64)
    ids, _ = score(logits, torch.full((n,), temperature), seeds, step, position)
    return ids


@pytest.fixture(scope="module")
def kernel_draws(ops):
    cache: dict[float, torch.Tensor] = {}

    def draws(temperature: float) -> torch.Tensor:
        if temperature not in cache:
            cache[temperature] = _draws(
                lambda *a: ops.score_rows_triton(*a, block_v=8),
                LOGITS_ROW,
                temperature,
                KERNEL_DRAWS,
                seed=1234,
            )
        return cache[temperature]

    return draws


def _counts(ids: torch.Tensor) -> torch.Tensor:
    return torch.bincount(ids, minlength=LOGITS_ROW.numel()).double()


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_sampling_distribution(kernel_draws, temperature) -> None:
    """Chi-square: kernel draws vs softmax(l/T), and vs independent reference
    draws (another seed). Deterministic (counter-based noise), never flaky."""
    ids = kernel_draws(temperature)
    probs = torch.softmax(LOGITS_ROW.double() / temperature, dim=0)
    assert _chi2_fit(_counts(ids), probs) > 1e-3

    ref = _draws(score_rows_torch, LOGITS_ROW, temperature, 20000, seed=98765)
    assert _chi2_fit(_counts(ref), probs) > 1e-3
    assert _chi2_two_sample(_counts(ids), _counts(ref)) > 1e-3

    # The same draws as the reference's on the same counters (all but
    # float32 near-ties of the two best keys).
    same = _draws(score_rows_torch, LOGITS_ROW, temperature, KERNEL_DRAWS, seed=1234)
    assert (ids == same).double().mean().item() >= 0.995


def test_sampling_test_has_power(kernel_draws) -> None:
    """The chi-square test above rejects a wrong temperature (0.4 for 0.5),
    greedy decoding and uniform sampling."""
    counts = _counts(kernel_draws(0.5))
    for wrong in (0.4, 0.6):
        probs = torch.softmax(LOGITS_ROW.double() / wrong, dim=0)
        assert _chi2_fit(counts, probs) < 1e-4
    assert (counts > 0).sum() > 3  # not greedy
    assert _chi2_fit(counts, torch.full((7,), 1 / 7, dtype=torch.float64)) < 1e-10


def test_sampling_a_large_vocabulary(ops) -> None:
    """One strong id among many weak ones, over several tiles and splits."""
    vocab, n = 2000, 300
    logits_row = torch.zeros(vocab, dtype=torch.bfloat16)
    logits_row[1234] = 7.0
    p = math.exp(7.0) / (math.exp(7.0) + vocab - 1)
    ids = _draws(
        lambda *a: ops.score_rows_triton(*a, block_v=512, splits=2),
        logits_row,
        1.0,
        n,
        seed=5,
    )
    hits = (ids == 1234).sum().item()
    sd = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 4 * sd, (hits, n * p)
    # The weak ids are spread over the vocabulary, not stuck in one tile.
    assert len(set((ids[ids != 1234] // 512).tolist())) == 4


@pytest.mark.parametrize("splits", [1, 4])
def test_a_column_window_scores_as_the_full_vocabulary(ops, splits) -> None:
    """A restricted LM head hands over only columns ``[lo, hi)``: with
    ``column_offset=lo`` both scorers choose the same vocabulary ids, with the
    same confidences and (sampled rows) the same noise, as from full-width
    logits with the same allowed ranges."""
    gen = torch.Generator().manual_seed(31)
    num_rows, vocab, lo, hi = 9, 900, 300, 700
    logits = 3 * torch.randn(num_rows, vocab, generator=gen)
    temperature = torch.tensor([0.0, 1.0, 0.7] * 3)
    rows = _rows(num_rows, gen)
    allowed = torch.tensor([[[lo, 520], [600, hi]]] * num_rows)
    full = score_rows_torch(logits, temperature, *rows, allowed=allowed)
    window = logits[:, lo:hi].contiguous()
    for ids, conf in (
        score_rows_torch(window, temperature, *rows, allowed=allowed, column_offset=lo),
        ops.score_rows_triton(
            window, temperature, *rows, allowed=allowed, column_offset=lo,
            block_v=64, splits=splits,
        ),
    ):  # fmt: skip
        assert torch.equal(ids, full[0])
        torch.testing.assert_close(
            conf.to(torch.float64), full[1], rtol=CONF_RTOL, atol=0
        )
    assert bool(((full[0] >= lo) & (full[0] < hi)).all())


@pytest.mark.parametrize("cfg_formula", ["maskgit", "llada"])
def test_generation_rows_sample_the_guided_restricted_softmax(cfg_formula) -> None:
    """MaskGIT candidates (image rows) and speech rows at temperature 1: the
    draws follow softmax of the guided logits over the allowed ids only, and
    the confidence is the drawn id's probability there; a window of the
    vocabulary (``column_offset``) draws exactly the same ids."""
    gen = torch.Generator().manual_seed(3)
    vocab, n, scale = 40, 20000, 2.5
    cond_row = 1.5 * torch.randn(vocab, generator=gen)
    uncond_row = 1.5 * torch.randn(vocab, generator=gen)
    spans = [[20, 30], [3, 4], [7, 8]]  # like the speech units, <|eoa|>, EOS
    allowed_ids = [i for lo, hi in spans for i in range(lo, hi)]
    guided = (
        (1 + scale) * cond_row.double() - scale * uncond_row.double()
        if cfg_formula == "maskgit"
        else uncond_row.double()
        + (scale + 1) * (cond_row.double() - uncond_row.double())
    )
    probs = torch.zeros(vocab, dtype=torch.float64)
    probs[allowed_ids] = torch.softmax(guided[allowed_ids], dim=0)
    args = (
        torch.ones(n),
        torch.full((n,), 77, dtype=torch.int64),
        torch.full((n,), 2, dtype=torch.int64),
        torch.arange(n, dtype=torch.int64),
    )
    kwargs = {
        "cfg_scale": torch.full((n,), scale),
        "cfg_formula": cfg_formula,
        "allowed": torch.tensor([spans] * n),
    }
    ids, conf = score_rows_torch(
        cond_row.expand(n, -1), *args, uncond_logits=uncond_row.expand(n, -1), **kwargs
    )
    counts = torch.bincount(ids, minlength=vocab).double()
    assert counts[[i for i in range(vocab) if i not in allowed_ids]].sum() == 0
    assert _chi2_fit(counts[allowed_ids], probs[allowed_ids]) > 1e-3
    torch.testing.assert_close(conf, probs[ids], rtol=1e-6, atol=0)
    # The test has power: the unguided softmax is rejected.
    plain = torch.softmax(cond_row.double()[allowed_ids], dim=0)
    assert _chi2_fit(counts[allowed_ids], plain) < 1e-6
    windowed, _ = score_rows_torch(
        cond_row[3:30].expand(n, -1),
        *args,
        uncond_logits=uncond_row[3:30].expand(n, -1),
        column_offset=3,
        **kwargs,
    )
    assert torch.equal(windowed, ids)
