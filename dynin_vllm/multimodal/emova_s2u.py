"""EMOVA speech-to-unit encoder: SPIRAL features + FSQ (``40ms_multilingual_8888``).

Inference path of the vendored NeMo fork (``VQCTCFinetuneModel`` with
``encoder_type='st'``; ``extract_feature(..., features_only=True)``):

1. ``wav2spec.featurizer`` (NeMo ``FilterbankFeatures``): peak normalisation
   (``x / (max|x| + 1e-5)``), pre-emphasis 0.97, ``torch.stft`` (n_fft 512, hop
   160, win 320, symmetric Hann, centre/reflect), power spectrum, the stored mel
   filterbank ``fb``, ``log(x + 2^-24)``, per-feature mean/std normalisation
   (unbiased std + 1e-5) over the valid frames, zero beyond them, pad to 16 frames.
2. ``feature_encoder.block_modules``: conv(k5,s2)+LN+ReLU, conv(k5,s2)+LN+ReLU,
   conv(k1)+LN, pre-LN transformer (2 x 512), conv(k5)+LN+ReLU, conv(k1)+LN,
   pre-LN transformer (10 x 768). TF-style "same" padding; 40 ms per output frame.
3. ``pre_quant`` (Linear 768 -> 4) and FSQ with levels ``[8, 8, 8, 8]``.

Tensor names equal the ``encoder.`` part of ``snu-aidas/emova_speech_tokenizer_hf``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynin_vllm.multimodal.loading import config_with_overrides
from dynin_vllm.multimodal.weight_norm import WNConv1d


@dataclass(frozen=True)
class SpiralConfig:
    """Sizes of the S2U encoder; defaults are the real checkpoint."""

    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 512
    win_length: int = 320
    hop_length: int = 160
    preemph: float = 0.97
    pad_to: int = 16
    # first conv-transformer block: three convs (k5 s2, k5 s2, k1) + transformer
    block1_channels: tuple[int, int, int] = (384, 512, 512)
    block1_layers: int = 2
    block1_heads: int = 8
    block1_ffn: int = 2048
    # second block: two convs (k5, k1) + transformer
    block2_channels: tuple[int, int] = (1536, 768)
    block2_layers: int = 10
    block2_heads: int = 12
    block2_ffn: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    fsq_levels: tuple[int, ...] = (8, 8, 8, 8)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None) -> SpiralConfig:
        """Defaults with ``overrides`` applied (unknown keys are an error)."""
        return config_with_overrides(cls, overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly field mapping."""
        return asdict(self)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-style mel filterbank ``[n_mels, n_fft // 2 + 1]`` (librosa's defaults).

    Only used to initialise the ``fb`` buffer of freshly built networks and
    test fixtures; real checkpoints store their own filterbank.
    """

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        mel = f / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        lin = m * (200.0 / 3)
        log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log_part, lin)

    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), n_mels + 2)
    hz_points = mel_to_hz(mel_points)
    gaps = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / gaps[:-1, None]
    upper = ramps[2:] / gaps[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


class FilterbankFeatures(nn.Module):
    """NeMo ``FilterbankFeatures`` at inference (no dither, ``pad_to=16``)."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.win_length = cfg.win_length
        self.preemph = cfg.preemph
        self.pad_to = cfg.pad_to
        self.register_buffer(
            "window", torch.hann_window(cfg.win_length, periodic=False)
        )
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames ``ceil(samples / hop)`` per utterance."""
        return torch.ceil(lengths.float() / self.hop_length).long()

    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N]`` samples -> log-mel ``[B, n_mels, T]`` and valid lengths."""
        x = wavs * (1.0 / (wavs.abs().max(dim=1, keepdim=True).values + 1e-5))
        seq_len = self.output_lengths(lengths)
        x = torch.cat((x[:, :1], x[:, 1:] - self.preemph * x[:, :-1]), dim=1)
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        # Magnitude then square, as the original computes it from (re, im) pairs.
        x = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1)).pow(2.0)
        x = torch.matmul(self.fb.to(x.dtype), x)
        x = torch.log(x + 2.0**-24)
        x = self._normalize_per_feature(x, seq_len)
        frames = torch.arange(x.shape[-1], device=x.device)
        x = x.masked_fill((frames[None, :] >= seq_len[:, None]).unsqueeze(1), 0.0)
        remainder = x.shape[-1] % self.pad_to
        if self.pad_to > 0 and remainder:
            x = F.pad(x, (0, self.pad_to - remainder), value=0.0)
        return x, seq_len

    @staticmethod
    def _normalize_per_feature(x: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        means, stds = [], []
        for i in range(x.shape[0]):
            valid = x[i, :, : int(seq_len[i])]
            if valid.shape[1] < 2:
                raise ValueError(
                    "audio too short: per-feature normalisation needs 2+ frames"
                )
            means.append(valid.mean(dim=1))
            stds.append(valid.std(dim=1))
        mean = torch.stack(means)
        std = torch.stack(stds) + 1e-5
        return (x - mean.unsqueeze(2)) / std.unsqueeze(2)


class _Wav2Spec(nn.Module):
    """Holds ``featurizer`` (NeMo's ``AudioToMelSpectrogramPreprocessor``)."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.featurizer = FilterbankFeatures(cfg)


class _Conv(nn.Module):
    """NeMo ``Conv`` wrapper: TF-style same padding and length tracking."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int
    ):
        super().__init__()
        if kernel_size % 2 != 1 or stride not in (1, 2):
            raise ValueError("only odd kernels with stride 1 or 2 are supported")
        self.kernel_size = kernel_size
        self.stride = stride
        half = kernel_size // 2
        self.pad_odd = (half, half)
        self.pad_even = (half - 1, half) if stride == 2 else (half, half)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, pad_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.kernel_size > 1:
            x = x.masked_fill(pad_mask.unsqueeze(1), 0.0)
            # Upstream picks the padding by the parity of x.size(-2), which for a
            # [B, C, T] input is the channel count, not the time length.
            x = F.pad(x, self.pad_even if x.shape[-2] % 2 == 0 else self.pad_odd)
        out = self.conv(x)
        if self.stride > 1:
            lengths = (lengths + self.stride - 1) // self.stride
            pad_mask = _pad_mask(lengths, out.shape[2])
        return out, lengths, pad_mask


class ConvNormAct(nn.Module):
    """Conv -> LayerNorm over channels (eps 1e-5) -> optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        relu: bool,
    ) -> None:
        super().__init__()
        self.conv = _Conv(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.LayerNorm(out_channels, eps=1e-5)
        self.relu = relu

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, pad_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, lengths, pad_mask = self.conv(x, lengths, pad_mask)
        out = self.norm(out.transpose(1, 2)).transpose(1, 2)
        if self.relu:
            out = F.relu(out)
        return out, lengths, pad_mask


class _SelfAttention(nn.Module):
    """fairseq ``MultiheadAttention`` (separate q/k/v projections, key padding mask)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = (~key_padding_mask)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _EncoderLayer(nn.Module):
    """Pre-LN transformer layer (``layer_norm_first=True``), GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_padding_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class _PosConv(nn.Module):
    """``Sequential(weight_norm(Conv1d, dim=2), SamePad, GELU)``; weights in ``0``."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.add_module(
            "0", WNConv1d(dim, dim, kernel, padding=kernel // 2, groups=groups, dim=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._modules["0"](x)
        if self.kernel % 2 == 0:
            out = out[:, :, :-1]
        return F.gelu(out)


class SpiralTransformer(nn.Module):
    """wav2vec-style ``TransformerEncoder`` with a convolutional position embedding."""

    def __init__(self, dim: int, layers: int, heads: int, ffn: int, cfg: SpiralConfig):
        super().__init__()
        self.pos_conv = _PosConv(dim, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.layers = nn.ModuleList(
            _EncoderLayer(dim, heads, ffn) for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, T, D]``; ``pad_mask``: ``[B, T]`` true at padding."""
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, pad_mask)
        return self.layer_norm(x)


def _pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class FeatureEncoder(nn.Module):
    """NeMo ``FeatureEncoder``: the seven ``block_modules`` of the SPIRAL encoder."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.block1_channels
        c4, c5 = cfg.block2_channels
        self.block_modules = nn.ModuleList(
            [
                ConvNormAct(cfg.n_mels, c1, 5, 2, relu=True),
                ConvNormAct(c1, c2, 5, 2, relu=True),
                ConvNormAct(c2, c3, 1, 1, relu=False),
                SpiralTransformer(
                    c3, cfg.block1_layers, cfg.block1_heads, cfg.block1_ffn, cfg
                ),
                ConvNormAct(c3, c4, 5, 1, relu=True),
                ConvNormAct(c4, c5, 1, 1, relu=False),
                SpiralTransformer(
                    c5, cfg.block2_layers, cfg.block2_heads, cfg.block2_ffn, cfg
                ),
            ]
        )
        self.output_dim = c5

    def forward(
        self, specs: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, n_mels, T]`` -> features ``[B, D, T/4]`` and lengths."""
        out = specs
        pad_mask = _pad_mask(lengths, out.shape[2])
        for module in self.block_modules:
            if isinstance(module, ConvNormAct):
                out, lengths, pad_mask = module(out, lengths, pad_mask)
            else:
                out = module(out.transpose(1, 2), pad_mask).transpose(1, 2)
        return out, lengths


class SpiralEncoder(nn.Module):
    """``ST2VecEncoder`` at inference: ``wav2spec`` then ``feature_encoder``."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.wav2spec = _Wav2Spec(cfg)
        self.feature_encoder = FeatureEncoder(cfg)

    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N]`` 16 kHz samples -> ``[B, T, D]`` features and lengths."""
        specs, spec_lengths = self.wav2spec.featurizer(wavs, lengths)
        features, lengths = self.feature_encoder(specs, spec_lengths)
        return features.transpose(1, 2), lengths


class FSQ(nn.Module):
    """Finite scalar quantiser as ported in EMOVA's ``my_scripts/fsq.py``.

    ``bound(z) = tanh(z + shift) * half_l - offset`` with ``half_l = (L-1)(1-eps)/2``,
    ``offset = 0.5`` for even ``L`` and ``shift = tan(offset / half_l)`` (``tan``, not
    ``atanh``, exactly as written there); digits ``round(bound(z)) + L//2`` (round half
    to even) and index ``sum(digit * basis)`` with ``basis = [1, 8, 64, 512]``.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        levels_t = torch.tensor([float(v) for v in levels])
        self.register_buffer("_levels_np", levels_t)
        self.register_buffer(
            "_basis", torch.cat((torch.ones(1), torch.cumprod(levels_t[:-1], dim=0)))
        )

    @property
    def codebook_size(self) -> int:
        """Number of codes (4,096 for ``[8, 8, 8, 8]``)."""
        return int(math.prod(int(v) for v in self._levels_np.tolist()))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` ``[..., d]`` into the level range."""
        levels = self._levels_np
        half_l = (levels - 1) * (1 - self.eps) / 2
        offset = torch.where(levels % 2 == 1, 0.0, 0.5)
        shift = torch.tan(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised codes normalised to ``[-1, 1]``."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded)
        half_width = torch.div(self._levels_np, 2, rounding_mode="floor")
        return rounded / half_width

    def codes_to_indexes(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes ``[..., d]`` -> integer indices ``[...]``."""
        half_width = torch.div(self._levels_np, 2, rounding_mode="floor")
        digits = codes * half_width + half_width
        return torch.sum(digits * self._basis, dim=-1).to(torch.int64)

    def indexes_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`codes_to_indexes`."""
        indices = indices.unsqueeze(-1).to(self._basis.dtype)
        digits = torch.remainder(
            torch.div(indices, self._basis, rounding_mode="floor"), self._levels_np
        )
        half_width = torch.div(self._levels_np, 2, rounding_mode="floor")
        return (digits - half_width) / half_width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` ``[..., d]`` -> unit indices ``[...]``."""
        return self.codes_to_indexes(self.quantize(z))


class S2UModel(nn.Module):
    """``VQCTCFinetuneModel`` at inference: ``encoder``, ``pre_quant``, FSQ."""

    def __init__(self, cfg: SpiralConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SpiralConfig()
        self.config = cfg
        self.encoder = SpiralEncoder(cfg)
        self.pre_quant = nn.Linear(
            self.encoder.feature_encoder.output_dim, len(cfg.fsq_levels)
        )
        self.quantizer = FSQ(cfg.fsq_levels)

    @property
    def samples_per_unit(self) -> int:
        """Input samples per output unit (640 = 40 ms at 16 kHz)."""
        return self.config.hop_length * 4

    @torch.no_grad()
    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N]`` float 16 kHz samples (zero-padded), lengths ``[B]`` ->
        unreduced units ``[B, T]`` (int64) and valid unit counts ``[B]``."""
        features, unit_lengths = self.encoder(wavs, lengths)
        units = self.quantizer(self.pre_quant(features))
        return units, unit_lengths
