"""EMOVA S2U for the multimodal processor: 16 kHz audio -> speech-unit ids.

Why S2U runs in the processor and not inside the engine, as MAGVIT-v2 does:
EMOVA collapses repeated units (``reduced=True``, which upstream's ASR
prompts use), so the number of units, and with it the prompt's length, depends
on what the audio says. vLLM fixes a prompt's placeholders when it processes
the request, before the engine sees it, so the units must be known then;
encoding them again in the engine would only repeat the work. Each audio item
is therefore encoded once, here, and its unit ids travel with the request
(vLLM's processor cache also reuses them for a repeated item). The engine
only embeds them, so prefix refreshes, ``exact`` re-forwards and preemption
never re-encode anything.

Only the S2U half of the EMOVA checkpoint is loaded; the weights are found as
:func:`dynin_vllm.multimodal.loading.locate_codec` says (``DYNIN_EMOVA_PATH``,
the model directory's ``emova_speech_tokenizer``, the hub).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.emova import (
    EMOVA_OPTIONAL_BUFFERS,
    EMOVA_TRAINING_ONLY,
    MIN_SAMPLES,
    EmovaConfig,
)
from dynin_vllm.multimodal.emova_s2u import S2UModel
from dynin_vllm.multimodal.ids import collapse_repeats
from dynin_vllm.multimodal.media import MediaError, validate_waveform
from dynin_vllm.multimodal.settings import (
    AUDIO_SAMPLE_RATE,
    MAX_AUDIO_SAMPLES,
    MAX_AUDIO_SECONDS,
    MAX_AUDIO_UNITS,
)

_ENCODER_PREFIX = "encoder."


class SpeechUnitEncoder:
    """EMOVA S2U: mono 16 kHz waveforms -> reduced unit sequences."""

    def __init__(self, s2u: S2UModel):
        self.s2u = s2u.float().eval()
        # One forward at a time: vLLM may process requests on several threads.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: Any) -> SpeechUnitEncoder:
        """The S2U weights (``encoder.*``) of an EMOVA checkpoint directory."""
        config = EmovaConfig.from_dict(loading.read_config(directory))
        model = S2UModel(config.s2u)
        weights = {
            name[len(_ENCODER_PREFIX) :]: tensor
            for name, tensor in loading.read_state_dict(directory).items()
            if name.startswith(_ENCODER_PREFIX)
        }
        loading.load_state_dict_strict(
            model,
            weights,
            skip=_encoder_names(EMOVA_TRAINING_ONLY),
            optional=_encoder_names(EMOVA_OPTIONAL_BUFFERS),
            source=f"EMOVA S2U weights in {directory}",
        )
        return cls(model)

    @torch.no_grad()
    def units(self, waveform: Any, *, what: str = "audio") -> list[int]:
        """Reduced units of one 16 kHz mono waveform (``MediaError`` naming
        ``what`` when it is empty, too short, too long or not finite)."""
        samples = check_waveform(waveform, what=what)
        batch = torch.from_numpy(samples)[None]
        lengths = torch.tensor([samples.shape[0]])
        with self._lock:
            units, counts = self.s2u(batch, lengths)
        return collapse_repeats(units[0, : int(counts[0])]).tolist()


def check_waveform(waveform: Any, *, what: str = "audio") -> np.ndarray:
    """``waveform`` as finite float32 samples of an encodable length."""
    samples = validate_waveform(np.asarray(waveform, dtype=np.float32), field=what)
    if samples.shape[0] < MIN_SAMPLES:
        raise MediaError(
            f"{what}: {samples.shape[0]} samples at {AUDIO_SAMPLE_RATE} Hz is too "
            f"short to encode (at least {MIN_SAMPLES})"
        )
    if samples.shape[0] > MAX_AUDIO_SAMPLES:
        raise MediaError(
            f"{what}: {samples.shape[0] / AUDIO_SAMPLE_RATE:.2f} s is longer than "
            f"the {MAX_AUDIO_SECONDS:g} s limit of one prompt ({MAX_AUDIO_UNITS} "
            "speech units, as Dynin-Omni is trained); split it, or send it to "
            "/v1/audio/transcriptions, which splits long audio"
        )
    return samples


def _encoder_names(names: Sequence[str]) -> tuple[str, ...]:
    """The ``encoder.`` entries of ``names``, relative to the S2U module."""
    return tuple(
        n[len(_ENCODER_PREFIX) :] for n in names if n.startswith(_ENCODER_PREFIX)
    )


@functools.cache
def speech_encoder_for(model: str) -> SpeechUnitEncoder | str:
    """The S2U encoder of ``model``'s EMOVA checkpoint, or why it is missing."""
    try:
        directory = loading.locate_codec(
            model,
            env_var=loading.EMOVA_PATH_ENV,
            subdir=loading.EMOVA_SUBDIR,
            default_repo=loading.EMOVA_DEFAULT_REPO,
        )
        return SpeechUnitEncoder.load(directory)
    except loading.CheckpointError as exc:
        return str(exc)
