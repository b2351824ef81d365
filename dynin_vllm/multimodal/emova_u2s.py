"""EMOVA unit-to-speech decoder: Unit-VITS ``SynthesizerTrn`` (inference path).

``synthesis_from_content_unit_style_embedding``: the text encoder ``enc_p``
(relative-position transformer over unit symbols) gives a prior and hidden
states; the stochastic duration predictor ``dp`` runs in reverse from noise to
log-durations; the prior is expanded by the ceiled durations, sampled, passed
through the coupling flow ``flow`` in reverse and vocoded by the HiFi-GAN
generator ``dec`` (hop 256 -> 22,050 Hz). A style vector ``g`` ``[B, gin, 1]``
conditions ``dp``, ``flow`` and ``dec``.

Unit ``u`` enters as symbol ``178 + u`` (``symbols_with_4096``: 178 text symbols,
then the unit strings ``"0"..."4095"``).

Training-only submodules (``enc_q``, ``enc_r``, ``emb_g``, the duration
predictor's posterior ``post_*`` and its unused ``flows.1``) are not built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynin_vllm.multimodal.loading import config_with_overrides
from dynin_vllm.multimodal.vits_modules import (
    LRELU_SLOPE,
    ChannelLayerNorm,
    ConvFlow,
    DDSConv,
    ElementwiseAffine,
    Flip,
    ResBlock1,
    ResidualCouplingLayer,
)
from dynin_vllm.multimodal.weight_norm import WNConvTranspose1d

#: Symbol id of unit 0 (``len`` of the text-symbol prefix of ``symbols_with_4096``).
UNIT_SYMBOL_OFFSET = 178


@dataclass(frozen=True)
class UnitVitsConfig:
    """Sizes of the U2S synthesiser; defaults are the real checkpoint
    (``ROMA_..._FT_20240812/config.json``)."""

    n_vocab: int = 4274
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    window_size: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = (
        (1, 3, 5),
        (1, 3, 5),
        (1, 3, 5),
    )
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    gin_channels: int = 256
    sampling_rate: int = 22050
    # duration predictor (``StochasticDurationPredictor(hidden, 192, 3, 0.5, 4)``,
    # whose filter width is overridden by ``in_channels``)
    dp_kernel_size: int = 3
    dp_n_flows: int = 4
    # prior flow (``ResidualCouplingBlock(inter, hidden, 5, 1, 4)``)
    flow_kernel_size: int = 5
    flow_dilation_rate: int = 1
    flow_n_layers: int = 4
    flow_n_flows: int = 4

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None) -> UnitVitsConfig:
        """Defaults with ``overrides`` applied (unknown keys are an error)."""
        return config_with_overrides(cls, overrides)

    @property
    def hop_length(self) -> int:
        """Output samples per spectrogram frame (product of the upsample rates)."""
        return math.prod(self.upsample_rates)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly field mapping."""
        return asdict(self)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with shared relative-position embeddings.

    With window ``w``, keys and values get ``emb_rel_k/v[j - i + w]`` added for
    ``|j - i| <= w``.
    """

    def __init__(self, channels: int, n_heads: int, window_size: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        rel_shape = (1, 2 * window_size + 1, self.k_channels)
        self.emb_rel_k = nn.Parameter(torch.randn(rel_shape) * self.k_channels**-0.5)
        self.emb_rel_v = nn.Parameter(torch.randn(rel_shape) * self.k_channels**-0.5)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, T]``; ``attn_mask``: ``[B, 1, T, T]`` (1 = attend)."""
        b, c, t = x.shape
        h, d, w = self.n_heads, self.k_channels, self.window_size

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, h, d, t).transpose(2, 3)

        q = heads(self.conv_q(x)) / math.sqrt(d)
        k, v = heads(self.conv_k(x)), heads(self.conv_v(x))
        scores = torch.matmul(q, k.transpose(-2, -1))

        pos = torch.arange(t, device=x.device)
        rel = pos[None, :] - pos[:, None] + w  # rel[i, j] = j - i + w
        valid = (rel >= 0) & (rel <= 2 * w)
        rel_index = rel.clamp(0, 2 * w)
        rel_logits = torch.matmul(q, self.emb_rel_k.transpose(-2, -1).unsqueeze(0))
        local = rel_logits.gather(-1, rel_index.expand(b, h, t, t))
        scores = scores + local * valid.to(scores.dtype)

        scores = scores.masked_fill(attn_mask == 0, -1e4)
        probs = F.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)

        # probs_rel[i, r] = probs[i, i + r - w] (0 outside the sequence)
        padded = F.pad(probs, (w, w))
        gather_idx = pos[:, None] + torch.arange(2 * w + 1, device=x.device)[None, :]
        probs_rel = padded.gather(-1, gather_idx.expand(b, h, t, 2 * w + 1))
        out = out + torch.matmul(probs_rel, self.emb_rel_v.unsqueeze(0))
        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class FFN(nn.Module):
    """Two 'same'-padded convolutions with ReLU, masked."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return x
        return F.pad(x, ((self.kernel_size - 1) // 2, self.kernel_size // 2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        return self.conv_2(self._pad(x * x_mask)) * x_mask


class AttentionEncoder(nn.Module):
    """Post-LN transformer of ``attentions.Encoder``."""

    def __init__(self, cfg: UnitVitsConfig) -> None:
        super().__init__()
        hc = cfg.hidden_channels
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(cfg.n_layers):
            self.attn_layers.append(
                RelativeSelfAttention(hc, cfg.n_heads, cfg.window_size)
            )
            self.norm_layers_1.append(ChannelLayerNorm(hc))
            self.ffn_layers.append(FFN(hc, cfg.filter_channels, cfg.kernel_size))
            self.norm_layers_2.append(ChannelLayerNorm(hc))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers,
            self.norm_layers_1,
            self.ffn_layers,
            self.norm_layers_2,
            strict=True,
        ):
            x = norm_1(x + attn(x, attn_mask))
            x = norm_2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """Symbol embedding (scaled by sqrt(hidden)) -> encoder -> prior mean / log-std."""

    def __init__(self, cfg: UnitVitsConfig) -> None:
        super().__init__()
        self.hidden_channels = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.emb = nn.Embedding(cfg.n_vocab, cfg.hidden_channels)
        self.encoder = AttentionEncoder(cfg)
        self.proj = nn.Conv1d(cfg.hidden_channels, cfg.inter_channels * 2, 1)

    def forward(
        self, symbols: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (self.emb(symbols) * math.sqrt(self.hidden_channels)).transpose(1, 2)
        x_mask = sequence_mask(lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return x, m, logs, x_mask


class StochasticDurationPredictor(nn.Module):
    """Flow-based duration predictor, reverse direction only.

    ``flows`` keeps the upstream indices (0 affine, then ConvFlow/Flip pairs);
    index 1 is the ConvFlow that the reverse pass drops ("useless vflow") and is
    left as a parameter-free placeholder.
    """

    def __init__(
        self, channels: int, kernel_size: int, n_flows: int, gin_channels: int
    ):
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.convs = DDSConv(channels, kernel_size, n_layers=3)
        self.cond = nn.Conv1d(gin_channels, channels, 1) if gin_channels else None
        flows: list[nn.Module] = [ElementwiseAffine(2)]
        for i in range(n_flows):
            flows.append(
                nn.Identity() if i == 0 else ConvFlow(2, channels, kernel_size, 3)
            )
            flows.append(Flip())
        self.flows = nn.ModuleList(flows)

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        noise: torch.Tensor,
        g: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-durations ``[B, 1, T]`` from hidden states and noise ``[B, 2, T]``
        (already scaled by ``noise_scale_w``)."""
        x = self.pre(x)
        if g is not None:
            x = x + self.cond(g)
        x = self.proj(self.convs(x, x_mask)) * x_mask
        order = list(reversed(self.flows))
        order = [*order[:-2], order[-1]]  # skip flows[1]
        z = noise
        for flow in order:
            if isinstance(flow, ElementwiseAffine):
                z = flow(z, x_mask, reverse=True)
            elif isinstance(flow, Flip):
                z = flow(z)
            else:
                z = flow(z, x_mask, g=x, reverse=True)
        return z[:, :1]


class ResidualCouplingBlock(nn.Module):
    """Stack of mean-only coupling layers alternating with channel flips."""

    def __init__(self, cfg: UnitVitsConfig) -> None:
        super().__init__()
        flows: list[nn.Module] = []
        for _ in range(cfg.flow_n_flows):
            flows.append(
                ResidualCouplingLayer(
                    cfg.inter_channels,
                    cfg.hidden_channels,
                    cfg.flow_kernel_size,
                    cfg.flow_dilation_rate,
                    cfg.flow_n_layers,
                    gin_channels=cfg.gin_channels,
                )
            )
            flows.append(Flip())
        self.flows = nn.ModuleList(flows)

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reverse pass (prior sample -> latent)."""
        for flow in reversed(self.flows):
            x = (
                flow(x)
                if isinstance(flow, Flip)
                else flow(x, x_mask, g=g, reverse=True)
            )
        return x


class Generator(nn.Module):
    """HiFi-GAN generator: conv_pre, weight-normed transposed convs + ResBlock1s."""

    def __init__(self, cfg: UnitVitsConfig) -> None:
        super().__init__()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch0, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(
                ch0 // 2**i, ch0 // 2 ** (i + 1), k, stride=u, padding=(k - u) // 2
            )
            for i, (u, k) in enumerate(
                zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
            )
        )
        self.resblocks = nn.ModuleList()
        ch = ch0
        for i in range(len(self.ups)):
            ch = ch0 // 2 ** (i + 1)
            kernels = zip(
                cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
            )
            for k, d in kernels:
                self.resblocks.append(ResBlock1(ch, k, tuple(d)))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, ch0, 1) if cfg.gin_channels else None

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        # The final activation uses PyTorch's default slope (0.01), as upstream.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, max_length]`` boolean mask."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def generate_path(durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Monotonic alignment ``[B, 1, T_y, T_x]`` from durations ``[B, 1, T_x]``."""
    b, _, t_y, t_x = mask.shape
    cum = torch.cumsum(durations, -1).view(b * t_x)
    path = sequence_mask(cum, t_y).to(mask.dtype).view(b, t_x, t_y)
    path = path - F.pad(path, (0, 0, 1, 0))[:, :-1]
    return path.unsqueeze(1).transpose(2, 3) * mask


@dataclass
class SynthesisOutput:
    """Result of :meth:`UnitVits.synthesize` for a batch."""

    #: ``[B, N]`` waveforms in ``[-1, 1]`` (padded to the longest).
    audio: torch.Tensor
    #: ``[B]`` valid samples per waveform (``frames * hop``).
    audio_lengths: torch.Tensor
    #: ``[B, T_x]`` integer frames per input unit (``ceil(exp(logw))``, 0 on padding).
    durations: torch.Tensor
    #: ``[B]`` spectrogram frames (``max(1, sum(durations))``).
    frame_lengths: torch.Tensor


class UnitVits(nn.Module):
    """``SynthesizerTrn`` inference modules: ``enc_p``, ``dec``, ``flow``, ``dp``."""

    def __init__(self, cfg: UnitVitsConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or UnitVitsConfig()
        self.config = cfg
        self.enc_p = TextEncoder(cfg)
        self.dec = Generator(cfg)
        self.flow = ResidualCouplingBlock(cfg)
        self.dp = StochasticDurationPredictor(
            cfg.hidden_channels, cfg.dp_kernel_size, cfg.dp_n_flows, cfg.gin_channels
        )

    @torch.no_grad()
    def synthesize(
        self,
        symbols: torch.Tensor,
        lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        *,
        noise_scale: float = 0.667,
        noise_scale_w: float = 0.8,
        length_scale: float | torch.Tensor = 1.0,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
    ) -> SynthesisOutput:
        """Symbols ``[B, T_x]`` (``178 + unit``), lengths ``[B]``, style ``[B, gin, 1]``
        -> waveforms. Noise is drawn on the CPU from ``generator`` (duration noise
        first, then the prior noise -- upstream's order), so a seeded generator
        gives the same audio on every device.

        With one generator per utterance (a sequence) and ``length_scale`` per
        utterance (``[B]``), each utterance draws its own noise for its own
        length, so it sounds as it does synthesized alone: requests batch
        without changing their seeded output."""
        device = self.enc_p.emb.weight.device
        symbols, lengths = symbols.to(device), lengths.to(device)
        x, m_p, logs_p, x_mask = self.enc_p(symbols, lengths)
        dp_noise = _noise((x.shape[0], 2, x.shape[2]), generator, x, lengths)
        logw = self.dp(x, x_mask, dp_noise * noise_scale_w, g=g)
        if isinstance(length_scale, torch.Tensor):
            length_scale = length_scale.to(logw).reshape(-1, 1, 1)
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * length_scale)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
        y_mask = sequence_mask(y_lengths, None).unsqueeze(1).to(x_mask.dtype)
        attn = generate_path(w_ceil, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1))
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)
        prior = _noise(m_p.shape, generator, m_p, y_lengths)
        z_p = m_p + prior * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=g) * y_mask
        hop = self.config.hop_length
        if z.shape[0] == 1:
            audio = self.dec(z, g=g)[:, 0]
        else:
            # The vocoder has no mask: its biases would leak from the padding
            # into an utterance's last samples, so each runs on its own frames.
            audio = torch.zeros(z.shape[0], z.shape[2] * hop, dtype=z.dtype)
            audio = audio.to(z.device)
            for b, n in enumerate(y_lengths.tolist()):
                style = None if g is None else g[b : b + 1]
                audio[b, : n * hop] = self.dec(z[b : b + 1, :, :n], g=style)[0, 0]
        return SynthesisOutput(
            audio=audio,
            audio_lengths=y_lengths * hop,
            durations=w_ceil[:, 0].long(),
            frame_lengths=y_lengths,
        )


def _noise(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator | None] | None,
    like: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Standard normal noise ``shape`` (``[B, C, T]``): from one generator for
    the batch, or per utterance from its own for its first ``lengths[b]``
    frames (zeros on its padding)."""
    if generator is None or isinstance(generator, torch.Generator):
        return _randn(shape, generator, like)
    noise = torch.zeros(tuple(shape), dtype=like.dtype, device=like.device)
    for b, (gen, n) in enumerate(zip(generator, lengths.tolist(), strict=True)):
        noise[b, :, :n] = _randn((1, shape[1], n), gen, like)[0]
    return noise


def _randn(
    shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)
