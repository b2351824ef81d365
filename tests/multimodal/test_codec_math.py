"""Exact index maths (LFQ, FSQ) and numerical building blocks checked against
hand computations or independent formulations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynin_vllm.multimodal.emova_s2u import FSQ
from dynin_vllm.multimodal.emova_u2s import RelativeSelfAttention, generate_path
from dynin_vllm.multimodal.magvit2 import LFQuantizer
from dynin_vllm.multimodal.rq_spline import rational_quadratic_spline
from dynin_vllm.multimodal.weight_norm import WNConv1d, fold_weight_norm

# LFQ


def _lfq_codes(lfq: LFQuantizer, channels: list[float]) -> int:
    z = torch.tensor(channels, dtype=torch.float32).view(1, -1, 1, 1)
    return int(lfq.codes_from_quantized(lfq.quantize(z)).item())


def test_lfq_msb_first_hand_cases() -> None:
    lfq = LFQuantizer(13)
    neg = [-1.0] * 13
    assert _lfq_codes(lfq, neg) == 0
    assert _lfq_codes(lfq, [0.5, *neg[1:]]) == 4096  # channel 0 is the MSB
    assert _lfq_codes(lfq, [*neg[:12], 3.0]) == 1  # channel 12 is the LSB
    assert _lfq_codes(lfq, [1.0] * 13) == 8191
    # 0b1010000000011 = 4096 + 1024 + 2 + 1
    pattern = [1, -1, 1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 1]
    assert _lfq_codes(lfq, [float(v) for v in pattern]) == 4096 + 1024 + 2 + 1


def test_lfq_zero_is_bit_zero() -> None:
    lfq = LFQuantizer(13)
    assert _lfq_codes(lfq, [0.0] * 13) == 0
    assert _lfq_codes(lfq, [0.0] * 12 + [1e-30]) == 1
    z_q = lfq.quantize(torch.zeros(1, 13, 1, 1))
    assert torch.equal(z_q, -torch.ones(1, 13, 1, 1))


def test_lfq_buffers_and_identity() -> None:
    lfq = LFQuantizer(13)
    assert lfq.power_vals.tolist() == [2**k for k in range(12, -1, -1)]
    assert lfq.embedding.shape == (8192, 13)
    assert lfq.embedding[5].tolist() == [-1.0] * 10 + [1.0, -1.0, 1.0]
    ids = torch.arange(8192).view(2, 4096)
    z = lfq.latents_from_codes(ids, (64, 64))
    assert z.shape == (2, 13, 64, 64)
    back = lfq.codes_from_quantized(lfq.quantize(z)).reshape(2, -1)
    assert torch.equal(back, ids)


def test_lfq_grid_is_row_major() -> None:
    lfq = LFQuantizer(13)
    z = lfq.latents_from_codes(torch.tensor([[1, 2, 3, 4, 5, 6]]), (2, 3))
    codes = lfq.codes_from_quantized(lfq.quantize(z))
    assert codes.tolist() == [[[1, 2, 3], [4, 5, 6]]]


# FSQ


def test_fsq_buffers_and_constants() -> None:
    fsq = FSQ([8, 8, 8, 8])
    assert fsq._levels_np.tolist() == [8.0] * 4
    assert fsq._basis.tolist() == [1.0, 8.0, 64.0, 512.0]
    assert fsq.codebook_size == 4096
    half_l = 7 * (1 - 1e-3) / 2
    assert half_l == pytest.approx(3.4965)
    shift = math.tan(0.5 / half_l)  # tan, exactly as the EMOVA port writes it
    expected = math.tanh(0.3 + shift) * half_l - 0.5
    got = fsq.bound(torch.full((1, 4), 0.3))
    assert got[0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_fsq_index_hand_cases() -> None:
    fsq = FSQ([8, 8, 8, 8])
    big = 50.0
    z = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # bound ~ 4e-5 -> 0 -> digit 4 everywhere
            [big, big, big, big],  # -> 3 -> digit 7
            [-big, -big, -big, -big],  # -> -4 -> digit 0
            [big, -big, 0.0, big],  # digits 7, 0, 4, 7
        ]
    )
    assert fsq(z).tolist() == [4 * 585, 7 * 585, 0, 7 + 0 * 8 + 4 * 64 + 7 * 512]


def test_fsq_round_half_to_even_on_bounded_values() -> None:
    fsq = FSQ([8, 8, 8, 8])

    # Feed chosen bounded values through quantize by bypassing bound().
    class Exact(FSQ):
        def bound(self, z: torch.Tensor) -> torch.Tensor:
            return z

    exact = Exact([8, 8, 8, 8])
    exact.load_state_dict(fsq.state_dict())
    z = torch.tensor([[0.5, 1.5, -0.5, 2.5]])
    # round half to even: 0, 2, -0, 2 -> digits 4, 6, 4, 6
    assert exact(z).tolist() == [4 + 6 * 8 + 4 * 64 + 6 * 512]


def test_fsq_codes_round_trip() -> None:
    fsq = FSQ([8, 8, 8, 8])
    indices = torch.arange(4096)
    codes = fsq.indexes_to_codes(indices)
    assert codes.min().item() == -1.0 and codes.max().item() == 0.75
    assert torch.equal(fsq.codes_to_indexes(codes), indices)
    # Quantising an already-quantised bound reproduces the index.
    digits = torch.stack([(indices // 8**d) % 8 for d in range(4)], -1).float()
    assert torch.equal(fsq.codes_to_indexes((digits - 4) / 4), indices)


# weight norm


@pytest.mark.parametrize("dim", [0, 2])
def test_weight_norm_fold_matches_definition(dim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 4, 5, generator=gen)
    g_shape = [1, 1, 1]
    g_shape[dim] = v.shape[dim]
    g = torch.rand(g_shape, generator=gen) + 0.5
    w = fold_weight_norm(g, v, dim)
    for i in range(v.shape[dim]):
        vi = v.select(dim, i)
        assert torch.allclose(
            w.select(dim, i), g.flatten()[i] * vi / vi.norm(), atol=1e-6
        )
    # Same as PyTorch's own weight norm for that dim.
    conv = nn.Conv1d(4, 6, 5)
    conv.weight.data.copy_(v)
    ref = torch.nn.utils.parametrizations.weight_norm(conv, dim=dim)
    ref.parametrizations.weight.original0.data.copy_(g)
    ref.parametrizations.weight.original1.data.copy_(v)
    assert torch.allclose(ref.weight, w, atol=1e-6)


def test_wnconv_uses_folded_weight() -> None:
    gen = torch.Generator().manual_seed(1)
    conv = WNConv1d(4, 6, 3, padding=1, dim=0)
    conv.weight_v.data.copy_(torch.randn(6, 4, 3, generator=gen))
    conv.weight_g.data.copy_(torch.rand(6, 1, 1, generator=gen))
    conv.bias.data.copy_(torch.randn(6, generator=gen))
    x = torch.randn(2, 4, 9, generator=gen)
    ref = torch.nn.functional.conv1d(
        x, fold_weight_norm(conv.weight_g, conv.weight_v, 0), conv.bias, padding=1
    )
    assert torch.allclose(conv(x), ref)
    assert sorted(conv.state_dict()) == ["bias", "weight_g", "weight_v"]


# flows, attention


def test_spline_inverse_undoes_forward() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-6, 6, 101)  # includes the linear tails beyond +-5
    w = torch.randn(101, 10, generator=gen)
    h = torch.randn(101, 10, generator=gen)
    d = torch.randn(101, 9, generator=gen)
    y, logdet = rational_quadratic_spline(x, w, h, d, inverse=False, tail_bound=5.0)
    x_back, logdet_inv = rational_quadratic_spline(
        y, w, h, d, inverse=True, tail_bound=5.0
    )
    assert torch.allclose(x_back, x, atol=1e-4)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-4)
    tails = x.abs() > 5
    assert torch.equal(y[tails], x[tails])
    # With one shared set of knots the map is monotonic and continuous at +-5.
    shared = [t[:1].expand_as(t) for t in (w, h, d)]
    y_shared, _ = rational_quadratic_spline(x, *shared, inverse=False, tail_bound=5.0)
    assert bool((y_shared[1:] > y_shared[:-1]).all())


def _relative_attention_oracle(
    attn: RelativeSelfAttention, x: torch.Tensor, mask: torch.Tensor
):
    b, c, t = x.shape
    h, d, w = attn.n_heads, attn.k_channels, attn.window_size
    q = attn.conv_q(x).view(b, h, d, t)
    k = attn.conv_k(x).view(b, h, d, t)
    v = attn.conv_v(x).view(b, h, d, t)
    ek, ev = attn.emb_rel_k[0], attn.emb_rel_v[0]
    out = torch.zeros(b, h, d, t)
    for bi in range(b):
        for hi in range(h):
            scores = torch.zeros(t, t)
            for i in range(t):
                for j in range(t):
                    qi = q[bi, hi, :, i] / math.sqrt(d)
                    s = qi @ k[bi, hi, :, j]
                    if abs(j - i) <= w:
                        s = s + qi @ ek[j - i + w]
                    scores[i, j] = s if mask[bi, 0, i, j] else -1e4
            p = torch.softmax(scores, -1)
            for i in range(t):
                acc = sum(p[i, j] * v[bi, hi, :, j] for j in range(t))
                for j in range(max(0, i - w), min(t, i + w + 1)):
                    acc = acc + p[i, j] * ev[j - i + w]
                out[bi, hi, :, i] = acc
    return attn.conv_o(out.reshape(b, c, t))


@pytest.mark.parametrize("t", [3, 9])  # shorter and longer than the window (4)
def test_relative_attention_matches_direct_formula(t: int) -> None:
    torch.manual_seed(0)
    attn = RelativeSelfAttention(8, 2, 4)
    x = torch.randn(2, 8, t)
    lengths = torch.tensor([t, t - 1])
    x_mask = (torch.arange(t)[None, :] < lengths[:, None]).float().unsqueeze(1)
    mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
    with torch.no_grad():
        assert torch.allclose(
            attn(x, mask), _relative_attention_oracle(attn, x, mask), atol=1e-5
        )


def test_generate_path_expands_durations() -> None:
    durations = torch.tensor([[[2.0, 0.0, 3.0]]])
    mask = torch.ones(1, 1, 5, 3)
    path = generate_path(durations, mask)[0, 0]
    assert path.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]]
