"""MaskGIT re-masking: the torch reference by hand, then the kernel against it."""

from __future__ import annotations

import math

import pytest
import torch

from dynin_vllm.kernels import noise
from dynin_vllm.kernels.maskgit import (
    annealed_temperature,
    cosine_mask_len,
    maskgit_commit_torch,
    maskgit_confidence_torch,
)

MASK = 126336


def test_cosine_schedule_of_the_dynin_t2i_defaults() -> None:
    """N = 1024 slots, 20 steps: the masks left after each step (upstream)."""
    want = [1020, 1011, 995, 973, 946, 912, 873, 828, 778, 724]
    want += [665, 601, 535, 464, 391, 316, 239, 160, 80, 0]
    assert [cosine_mask_len(1024, s, 20) for s in range(20)] == want
    assert cosine_mask_len(4, 2, 4) == 1  # floor(4*cos(3pi/8)) = 1
    assert cosine_mask_len(2, 2, 4) == 1  # floor(0.77) = 0, kept at 1
    with pytest.raises(ValueError):
        cosine_mask_len(4, 4, 4)


def test_temperature_annealing_is_cumulative() -> None:
    got = [annealed_temperature(1.0, s, 20) for s in range(5)]
    want = [0.95, 0.95 * 0.9, 0.95 * 0.9 * 0.85, 0.95 * 0.9 * 0.85 * 0.8]
    want.append(want[-1] * 0.75)
    assert got == pytest.approx(want, rel=1e-15)
    assert annealed_temperature(2.0, 19, 20) == 0.0


# A pure-Python SplitMix64 (independent of ``noise``) for the hand-checked case.
M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _uniform(seed: int, stream: int, step: int, position: int) -> float:
    key = _mix((seed + stream * 0xD1B54A32D192ED03) & M64)
    key = _mix(key ^ ((step * 0xABC98388FB8FAC03) & M64))
    key = _mix(key ^ ((position * 0x8CB92BA72F3D8DD7) & M64))
    bits = _mix((key + 0x9E3779B97F4A7C15) & M64)  # draw index 0
    return ((bits >> 11) + 0.5) * 2.0**-53


def test_reference_by_hand() -> None:
    """Five slots, two known; conf = log p + T*g; re-mask the mask_len lowest."""
    seed, step, base, temperature = 42, 3, 100, 0.7
    probs = [0.2, 0.9, 0.05, 0.6, 0.3]
    editable = [True, False, True, True, True]
    canvas = torch.tensor([[MASK, 8, MASK, MASK, MASK]])
    cand = torch.tensor([[11, 12, 13, 14, 15]])
    conf = []
    for w, (p, e) in enumerate(zip(probs, editable, strict=True)):
        g = -math.log(-math.log(_uniform(seed, noise.MASKGIT, step, base + w)))
        conf.append(math.log(p) + temperature * g if e else math.inf)
    mask_len = 2
    cut = sorted(conf)[mask_len]
    remask = [c < cut for c in conf]
    want = [
        MASK if r else (c if e else k)
        for r, c, e, k in zip(
            remask, cand[0].tolist(), editable, canvas[0].tolist(), strict=True
        )
    ]
    assert sum(remask) == 2

    probs_t = torch.tensor([probs], dtype=torch.float64)
    temp_t = torch.tensor([temperature], dtype=torch.float64)
    got_conf = maskgit_confidence_torch(
        probs_t, torch.tensor([editable]), temp_t,
        torch.tensor([seed]), torch.tensor([step]), torch.tensor([base]),
    )  # fmt: skip
    assert got_conf[0].tolist() == pytest.approx(conf, rel=1e-12)
    count, done = maskgit_commit_torch(
        canvas, cand, probs_t, torch.tensor([editable]),
        torch.tensor([mask_len]), temp_t,
        torch.tensor([seed]), torch.tensor([step]), torch.tensor([base]),
    )  # fmt: skip
    assert canvas[0].tolist() == want
    assert count.tolist() == [2] and done.tolist() == [False]


def _step(fn, canvas, probs, editable, mask_len, temperature=0.0):
    rows = canvas.shape[0]
    cand = torch.arange(canvas.numel()).view_as(canvas) + 1000
    z = torch.zeros(rows, dtype=torch.int64)
    out = canvas.clone()
    count, done = fn(
        out, cand, probs, editable, torch.tensor(mask_len),
        torch.full((rows,), temperature), z, z, z,
    )  # fmt: skip
    return out, count, done


def test_reference_ties_and_edge_cases_by_hand() -> None:
    """Upstream's ``conf < cut``: ties at the cut stay committed."""
    probs = torch.tensor([[0.5, 0.1, 0.1, 0.9]])
    edit = torch.ones(1, 4, dtype=torch.bool)
    canvas = torch.full((1, 4), MASK)
    # mask_len 1: cut = sorted[1] = log 0.1, nothing is below it.
    out, count, done = _step(maskgit_commit_torch, canvas, probs, edit, [1])
    assert out.tolist() == [[1000, 1001, 1002, 1003]] and done.tolist() == [True]
    # mask_len 2: cut = log 0.5, both 0.1 slots are re-masked.
    out, count, _ = _step(maskgit_commit_torch, canvas, probs, edit, [2])
    assert out.tolist() == [[1000, MASK, MASK, 1003]] and count.tolist() == [2]
    # mask_len above #unknown - 1 is clamped to 3: the three lowest.
    out, _, _ = _step(maskgit_commit_torch, canvas, probs, edit, [50])
    assert out.tolist() == [[MASK, MASK, MASK, 1003]]
    # A single unknown slot (not the last step) is re-masked, as upstream.
    one = torch.tensor([[False, True, False, False]])
    out, count, done = _step(maskgit_commit_torch, canvas, probs, one, [5])
    assert out.tolist() == [[MASK] * 4] and count.tolist() == [0]
    # The last step (mask_len 0) commits every unknown slot.
    out, count, done = _step(maskgit_commit_torch, canvas, probs, edit, [0])
    assert count.tolist() == [4] and done.tolist() == [True]


def _random_case(rows: int, width: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    editable = torch.rand(rows, width, generator=gen) < 0.7
    editable[0] = True
    if rows > 1:
        editable[1] = False
    canvas = torch.randint(0, 8192, (rows, width), generator=gen)
    canvas[editable] = MASK
    cand = torch.randint(0, 8192, (rows, width), generator=gen)
    levels = torch.tensor([1e-30, 1e-4, 0.01, 0.2, 0.2, 0.5, 0.93, 1.0])
    probs = levels[torch.randint(0, len(levels), (rows, width), generator=gen)]
    probs = torch.where(
        torch.rand(rows, width, generator=gen) < 0.5,
        probs,
        torch.rand(rows, width, generator=gen),
    )
    mask_len = torch.randint(0, width + 2, (rows,), generator=gen)
    mask_len[-1] = 0
    temperature = torch.tensor(
        [0.0, 1.0, 0.3, 0.0, 4.5, 0.95, 0.0][:rows], dtype=torch.float64
    )
    seed_ = torch.randint(-(2**62), 2**62, (rows,), generator=gen)
    step = torch.randint(0, 64, (rows,), generator=gen)
    position = torch.randint(0, 2048, (rows,), generator=gen)
    return (
        canvas,
        cand,
        probs.float(),
        editable,
        mask_len,
        temperature,
        seed_,
        step,
        position,
    )


@pytest.mark.parametrize(
    ("rows", "width", "seed"), [(3, 1, 0), (5, 37, 1), (7, 130, 2)]
)
def test_kernel_matches_reference(ops, rows, width, seed) -> None:
    canvas, *args = _random_case(rows, width, seed)
    ours, theirs = canvas.clone(), canvas.clone()
    got = ops.maskgit_commit_triton(ours, *args)
    want = maskgit_commit_torch(theirs, *args)
    assert torch.equal(ours, theirs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # And the noisy confidences themselves.
    probs, editable, temperature, seed_, step, position = (
        args[1],
        args[2],
        args[4],
        args[5],
        args[6],
        args[7],
    )
    conf = ops.maskgit_confidence_triton(
        probs, editable, temperature, seed_, step, position
    )
    ref = maskgit_confidence_torch(probs, editable, temperature, seed_, step, position)
    torch.testing.assert_close(conf, ref, rtol=1e-13, atol=0)


def test_kernel_hand_cases(ops) -> None:
    probs = torch.tensor([[0.5, 0.1, 0.1, 0.9]] * 3)
    edit = torch.ones(3, 4, dtype=torch.bool)
    canvas = torch.full((3, 4), MASK)
    for fn in (ops.maskgit_commit_triton, maskgit_commit_torch):
        out, count, done = _step(fn, canvas, probs, edit, [1, 2, 0])
        assert out[0].tolist() == [1000, 1001, 1002, 1003]
        assert out[1].tolist() == [1004, MASK, MASK, 1007]
        assert count.tolist() == [4, 2, 4] and done.tolist() == [True, False, True]


def test_empty_batch(ops) -> None:
    canvas, *args = _random_case(2, 4, 0)
    got = ops.maskgit_commit_triton(canvas[:0], *[a[:0] for a in args])
    assert got[0].shape == (0,) and got[1].shape == (0,)
