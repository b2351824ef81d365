"""The EMOVA speech tokenizer (``snu-aidas/emova_speech_tokenizer_hf``).

``EmovaSpeechTokenizer`` holds the upstream HF wrapper's three submodules under
the same names -- ``encoder`` (S2U), ``decoder`` (U2S) and ``style_embedding``
(126 x 256 style centroids) -- so the checkpoint loads as is:

* :meth:`EmovaSpeechTokenizer.encode` -- 16 kHz audio -> units in ``[0, 4096)``
  with consecutive repeats collapsed (``reduced=True``), <= 25 units/s;
* :meth:`EmovaSpeechTokenizer.decode` -- units + style condition -> 22,050 Hz
  waveform.

Use :func:`load_emova` to build it from a checkpoint directory or hub id.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.emova_s2u import S2UModel, SpiralConfig
from dynin_vllm.multimodal.emova_u2s import UNIT_SYMBOL_OFFSET, UnitVits, UnitVitsConfig
from dynin_vllm.multimodal.ids import IdsLike, collapse_repeats
from dynin_vllm.multimodal.media import (
    FileInput,
    MediaError,
    load_audio,
    resample_audio,
    validate_waveform,
)

GENDERS = ("female", "male")
EMOTIONS = ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
SPEEDS = ("normal", "fast", "slow")
PITCHES = ("normal", "high", "low")

#: The 126 style conditions in embedding-row order: upstream's
#: ``condition2style_centroid.txt`` lists them sorted lexicographically.
STYLE_CONDITIONS: tuple[str, ...] = tuple(
    sorted(
        f"gender-{g}_emotion-{e}_speed-{s}_pitch-{p}"
        for g, e, s, p in itertools.product(GENDERS, EMOTIONS, SPEEDS, PITCHES)
    )
)
DEFAULT_CONDITION = "gender-female_emotion-neutral_speed-normal_pitch-normal"

#: Checkpoint tensors the inference network does not have, skipped on load:
#: the CTC phone decoder and the Gaussian mask constant of the S2U model; the
#: posterior encoder, reference (mel-style) encoder, speaker-centroid table,
#: the duration predictor's posterior flows and its unused ``flows.1`` of U2S.
#: Entries ending in "." are prefixes, the others exact names.
EMOVA_TRAINING_ONLY: tuple[str, ...] = (
    "encoder.decoder.",
    "encoder.encoder.mask_emb",
    "decoder.enc_q.",
    "decoder.enc_r.",
    "decoder.emb_g.",
    "decoder.dp.post_pre.",
    "decoder.dp.post_proj.",
    "decoder.dp.post_convs.",
    "decoder.dp.post_flows.",
    "decoder.dp.flows.1.",
)
#: Deterministic buffers rebuilt by the constructor, tolerated if absent.
EMOVA_OPTIONAL_BUFFERS: tuple[str, ...] = (
    "encoder.quantizer._levels_np",
    "encoder.quantizer._basis",
)

#: Unit types this implementation reproduces (values of the HF config).
S2U_UNIT_TYPE = "40ms_multilingual_8888"
U2S_UNIT_TYPE = "40ms_multilingual_8888_xujing_cosyvoice_FT"
#: Longest input encoded in one pass (60 s); longer audio goes in 100 s chunks.
MAX_SINGLE_PASS_SAMPLES = 960_000
CHUNK_SAMPLES = 1_600_000
#: Shortest encodable input: the STFT's reflect padding needs > n_fft / 2 samples.
MIN_SAMPLES = 257


@dataclass(frozen=True)
class EmovaConfig:
    """Everything needed to build the network, parsed from ``config.json``."""

    s2u: SpiralConfig
    u2s: UnitVitsConfig
    num_styles: int
    style_dim: int
    style2idx: Mapping[str, int]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> EmovaConfig:
        """Parse the HF config (``u2s_num_styles``, ``u2s_dim_styles``,
        ``u2s_style2idx``, unit types) plus the size overrides ``s2u_overrides`` /
        ``u2s_overrides`` that only tiny test fixtures carry."""
        for key, expected in (
            ("s2u_unit_type", S2U_UNIT_TYPE),
            ("u2s_unit_type", U2S_UNIT_TYPE),
        ):
            if key in config and config[key] != expected:
                raise loading.CheckpointError(
                    f"config.json {key}={config[key]!r} is not supported "
                    f"(only {expected!r})"
                )
        try:
            s2u = SpiralConfig.from_overrides(config.get("s2u_overrides"))
            u2s = UnitVitsConfig.from_overrides(config.get("u2s_overrides"))
        except (TypeError, ValueError) as exc:
            raise loading.CheckpointError(
                f"bad size overrides in config.json: {exc}"
            ) from exc
        style2idx = config.get("u2s_style2idx") or {
            c: i for i, c in enumerate(STYLE_CONDITIONS)
        }
        num_styles = int(config.get("u2s_num_styles") or len(style2idx))
        style_dim = int(config.get("u2s_dim_styles") or u2s.gin_channels)
        if style_dim != u2s.gin_channels:
            raise loading.CheckpointError(
                f"u2s_dim_styles={style_dim} differs from "
                f"gin_channels={u2s.gin_channels}"
            )
        if any(not 0 <= int(i) < num_styles for i in style2idx.values()):
            raise loading.CheckpointError(
                "u2s_style2idx holds indices outside the style table"
            )
        return cls(
            s2u, u2s, num_styles, style_dim, {k: int(v) for k, v in style2idx.items()}
        )


@dataclass
class SpeechOutput:
    """A synthesised utterance."""

    #: float32 waveform in ``[-1, 1]``.
    waveform: np.ndarray
    #: Sample rate (22,050 Hz for the real model).
    sample_rate: int
    #: Frames per input unit (``ceil(exp(logw))``);
    #: ``len(waveform) == hop * max(1, sum)``.
    durations: np.ndarray
    #: Samples per frame (256).
    hop_length: int


class EmovaSpeechTokenizer(nn.Module):
    """EMOVA S2U encoder + U2S decoder + style table, with the checkpoint's names."""

    def __init__(self, config: EmovaConfig | None = None) -> None:
        super().__init__()
        config = config or EmovaConfig.from_dict({})
        self.config = config
        self.encoder = S2UModel(config.s2u)
        self.decoder = UnitVits(config.u2s)
        self.style_embedding = nn.Embedding(config.num_styles, config.style_dim)

    # ---------------------------------------------------------------- properties

    @property
    def input_sample_rate(self) -> int:
        """Sample rate the encoder consumes (16 kHz)."""
        return self.config.s2u.sample_rate

    @property
    def output_sample_rate(self) -> int:
        """Sample rate the decoder produces (22,050 Hz)."""
        return self.config.u2s.sampling_rate

    @property
    def codebook_size(self) -> int:
        """Number of speech units (4,096)."""
        return self.encoder.quantizer.codebook_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.style_embedding.weight.device

    # ---------------------------------------------------------------- S2U

    @torch.no_grad()
    def encode_batch(
        self, waveforms: Sequence[Any], *, reduced: bool = True
    ) -> list[torch.Tensor]:
        """Encode 16 kHz mono waveforms in one zero-padded batch (upstream's
        ``batch_extract_unit``). Returns one 1-D LongTensor of units per input."""
        arrays = [
            validate_waveform(w, field=f"waveform[{i}]")
            for i, w in enumerate(waveforms)
        ]
        for i, array in enumerate(arrays):
            if array.shape[0] < MIN_SAMPLES:
                raise MediaError(
                    f"waveform[{i}]: {array.shape[0]} samples is too short "
                    f"(need >= {MIN_SAMPLES} at {self.input_sample_rate} Hz)"
                )
        lengths = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
        batch = torch.zeros(len(arrays), int(lengths.max()), dtype=torch.float32)
        for i, array in enumerate(arrays):
            batch[i, : array.shape[0]] = torch.from_numpy(array)
        units, unit_lengths = self.encoder(
            batch.to(self.device), lengths.to(self.device)
        )
        out = []
        for row, n in zip(units.cpu(), unit_lengths.cpu().tolist(), strict=True):
            seq = row[:n]
            out.append(collapse_repeats(seq) if reduced else seq.clone())
        return out

    @torch.no_grad()
    def encode(
        self,
        audio: FileInput | np.ndarray | torch.Tensor,
        sample_rate: int | None = None,
        *,
        reduced: bool = True,
    ) -> torch.Tensor:
        """Audio file (any rate/channels soundfile reads) or a mono waveform with its
        ``sample_rate`` -> 1-D LongTensor of units.

        Inputs up to 60 s are encoded in one pass; longer ones in 100 s chunks whose
        units are concatenated before the repeat collapse.
        """
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise ValueError("sample_rate is required when passing a waveform")
            wave = validate_waveform(audio)
            if sample_rate != self.input_sample_rate:
                wave = resample_audio(wave, sample_rate, self.input_sample_rate)
        else:
            wave, _ = load_audio(audio, self.input_sample_rate)
        if wave.shape[0] <= MAX_SINGLE_PASS_SAMPLES:
            units = self.encode_batch([wave], reduced=False)[0]
        else:
            chunks = [
                wave[s : s + CHUNK_SAMPLES]
                for s in range(0, wave.shape[0], CHUNK_SAMPLES)
            ]
            if chunks[-1].shape[0] < MIN_SAMPLES and len(chunks) > 1:
                chunks[-2] = np.concatenate(chunks[-2:])
                chunks.pop()
            units = torch.cat(
                [self.encode_batch([c], reduced=False)[0] for c in chunks]
            )
        return collapse_repeats(units) if reduced else units

    # ---------------------------------------------------------------- U2S

    def style_index(self, condition: str) -> int:
        """Row of ``style_embedding`` for a condition string (error if unknown)."""
        try:
            return self.config.style2idx[condition]
        except KeyError:
            raise ValueError(
                f"unknown style condition {condition!r}; expected "
                "gender-{female,male}_emotion-{angry,disgusted,fearful,happy,neutral,sad,"
                "surprised}_speed-{normal,fast,slow}_pitch-{normal,high,low}"
            ) from None

    @torch.no_grad()
    def decode(
        self,
        units: IdsLike,
        condition: str | None = DEFAULT_CONDITION,
        *,
        generator: torch.Generator | None = None,
        noise_scale: float = 0.667,
        noise_scale_w: float = 0.8,
        length_scale: float = 1.0,
    ) -> SpeechOutput:
        """Units in ``[0, 4096)`` -> waveform at :attr:`output_sample_rate`.

        ``condition=None`` synthesises without a style vector (upstream's behaviour
        for a missing condition). ``generator`` seeds the sampling noise.
        """
        item = SpeechItem(units, condition, generator, length_scale)
        (output,) = self.decode_batch(
            [item], noise_scale=noise_scale, noise_scale_w=noise_scale_w
        )
        return output

    @torch.no_grad()
    def decode_batch(
        self,
        items: Sequence[SpeechItem],
        *,
        noise_scale: float = 0.667,
        noise_scale_w: float = 0.8,
    ) -> list[SpeechOutput]:
        """Several utterances in one padded batch, each as :meth:`decode`
        gives it alone (its own generator, length scale and style; equal up
        to float rounding). A batch mixing styled and unstyled items runs as
        two batches."""
        items = list(items)
        if not items:
            return []
        styled = [i for i, item in enumerate(items) if item.condition is not None]
        if 0 < len(styled) < len(items):
            plain = [i for i in range(len(items)) if i not in set(styled)]
            outputs: list[SpeechOutput | None] = [None] * len(items)
            for group in (styled, plain):
                results = self.decode_batch([items[i] for i in group])
                for i, out in zip(group, results, strict=True):
                    outputs[i] = out
            return outputs  # type: ignore[return-value]
        units = [self._unit_tensor(item.units) for item in items]
        lengths = torch.tensor([u.numel() for u in units])
        symbols = torch.zeros(len(units), int(lengths.max()), dtype=torch.long)
        for b, unit_tensor in enumerate(units):
            symbols[b, : unit_tensor.numel()] = unit_tensor + UNIT_SYMBOL_OFFSET
        g = None
        if styled:
            index = torch.tensor(
                [self.style_index(item.condition) for item in items],
                device=self.device,
            )
            g = self.style_embedding(index).unsqueeze(-1)
        result = self.decoder.synthesize(
            symbols,
            lengths,
            g,
            noise_scale=noise_scale,
            noise_scale_w=noise_scale_w,
            length_scale=torch.tensor([item.length_scale for item in items]),
            generator=[item.generator for item in items],
        )
        return self._outputs(result, lengths)

    def _unit_tensor(self, units: IdsLike) -> torch.Tensor:
        unit_tensor = torch.as_tensor(
            units.tolist() if isinstance(units, torch.Tensor) else list(units),
            dtype=torch.long,
        ).reshape(-1)
        if unit_tensor.numel() == 0:
            raise ValueError("cannot synthesise an empty unit sequence")
        if int(unit_tensor.min()) < 0 or int(unit_tensor.max()) >= self.codebook_size:
            raise ValueError(f"speech units must lie in [0, {self.codebook_size})")
        return unit_tensor

    def _outputs(self, result: Any, lengths: torch.Tensor) -> list[SpeechOutput]:
        """Per utterance: its samples and the durations of its own units."""
        outputs = []
        for b in range(result.audio.shape[0]):
            n = int(result.audio_lengths[b])
            units = int(lengths[b])
            outputs.append(
                SpeechOutput(
                    waveform=result.audio[b, :n].float().cpu().numpy(),
                    sample_rate=self.output_sample_rate,
                    durations=result.durations[b, :units].cpu().numpy(),
                    hop_length=self.config.u2s.hop_length,
                )
            )
        return outputs


@dataclass(frozen=True)
class SpeechItem:
    """One utterance of :meth:`EmovaSpeechTokenizer.decode_batch`."""

    units: Sequence[int]
    condition: str | None = DEFAULT_CONDITION
    generator: torch.Generator | None = None
    length_scale: float = 1.0


def load_emova(
    path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> EmovaSpeechTokenizer:
    """Build :class:`EmovaSpeechTokenizer` and load its weights strictly.

    ``path``: checkpoint directory or hub id; defaults to ``$DYNIN_EMOVA_PATH``,
    then ``snu-aidas/emova_speech_tokenizer_hf``. Training-only tensors listed in
    :data:`EMOVA_TRAINING_ONLY` are skipped; any other mismatch raises
    :class:`~dynin_vllm.multimodal.loading.CheckpointError`.
    """
    directory = loading.resolve_checkpoint_dir(
        path,
        env_var=loading.EMOVA_PATH_ENV,
        default_repo=loading.EMOVA_DEFAULT_REPO,
        revision=revision,
    )
    config = EmovaConfig.from_dict(loading.read_config(directory))
    model = EmovaSpeechTokenizer(config)
    state_dict = loading.read_state_dict(directory)
    loading.load_state_dict_strict(
        model,
        state_dict,
        skip=EMOVA_TRAINING_ONLY,
        optional=EMOVA_OPTIONAL_BUFFERS,
        source=f"EMOVA checkpoint {directory}",
    )
    model.eval()
    if device is not None:
        model.to(device)
    return model
