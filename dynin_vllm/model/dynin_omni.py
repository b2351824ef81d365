"""Dynin-Omni: the LLaDA model plus vLLM's speech-to-text interface.

``SupportsTranscription`` is what makes ``vllm serve`` mount
``/v1/audio/transcriptions``. vLLM decodes the upload, resamples it to
16 kHz mono and splits long audio at quiet points (with 1 s of overlap) into
pieces of at most 20 s, or fewer where the context is too short to hold 20 s
of units and the 128-slot answer; each piece becomes one
speech-recognition prompt here, and the
multimodal processor lays it out as upstream's ``validation/speech.py`` does:

    <|s2t|> <|soa|> speech units <|eoa|> tokenize(CHAT(instruction))

The instruction is the request's ``prompt`` when it has one, else upstream's
"Transcribe the given audio.". The answer gets 128 slots unless the request
sets ``max_completion_tokens`` (``dynin_vllm.engine.validation``), and the
speech-recognition denoising defaults (``DiffusionParams.for_task``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from vllm.config import ModelConfig, SpeechToTextConfig
from vllm.model_executor.models.interfaces import SupportsTranscription
from vllm.multimodal import MULTIMODAL_REGISTRY

from dynin_vllm.model.llada import LLaDAForMaskedDiffusion
from dynin_vllm.multimodal.generation import chat_turn
from dynin_vllm.multimodal.processor import (
    DyninDummyInputsBuilder,
    DyninMultiModalProcessor,
    DyninProcessingInfo,
)
from dynin_vllm.multimodal.settings import (
    ASR_ANSWER_LENGTH,
    ASR_INSTRUCTION,
    AUDIO_SAMPLE_RATE,
    SAMPLES_PER_UNIT,
)

#: Longest piece of a transcription request: under the 20.48 s a prompt holds.
TRANSCRIPTION_CLIP_SECONDS = 20
#: Context a transcription prompt keeps free of units: the task and audio
#: markers and the instruction's chat turn (about 25 tokens), with room over.
PROMPT_TEXT_ALLOWANCE = 48


def transcription_clip_seconds(max_model_len: int) -> int:
    """Longest piece whose units, prompt text and answer fit the context."""
    units = max_model_len - ASR_ANSWER_LENGTH - PROMPT_TEXT_ALLOWANCE
    seconds = units * SAMPLES_PER_UNIT // AUDIO_SAMPLE_RATE
    return max(1, min(TRANSCRIPTION_CLIP_SECONDS, seconds))


@MULTIMODAL_REGISTRY.register_processor(
    DyninMultiModalProcessor,
    info=DyninProcessingInfo,
    dummy_inputs=DyninDummyInputsBuilder,
)
class DyninOmniForMaskedDiffusion(LLaDAForMaskedDiffusion, SupportsTranscription):
    """vLLM model for ``DyninOmniModelLM``: every LLaDA feature, media
    understanding, and ``/v1/audio/transcriptions``."""

    # Upstream evaluates speech recognition on LibriSpeech (English); vLLM
    # accepts other languages with a warning. The language is not part of
    # the prompt.
    supported_languages: ClassVar[Mapping[str, str]] = {"en": "English"}

    @classmethod
    def get_speech_to_text_config(
        cls, model_config: ModelConfig, task_type: Literal["transcribe", "translate"]
    ) -> SpeechToTextConfig:
        return SpeechToTextConfig(
            sample_rate=AUDIO_SAMPLE_RATE,
            max_audio_clip_s=transcription_clip_seconds(model_config.max_model_len),
        )

    @classmethod
    def get_generation_prompt(cls, stt_params: Any) -> Any:
        if stt_params.task_type != "transcribe":
            raise ValueError(
                "Dynin-Omni transcribes speech; translation is not supported"
            )
        instruction = (stt_params.request_prompt or "").strip() or ASR_INSTRUCTION
        rate = stt_params.stt_config.sample_rate
        return {
            "prompt": chat_turn(instruction),
            "multi_modal_data": {"audio": (stt_params.audio, rate)},
        }

    @classmethod
    def get_num_audio_tokens(
        cls,
        audio_duration_s: float,
        stt_config: SpeechToTextConfig,
        model_config: ModelConfig,
    ) -> int | None:
        # An upper bound: repeated units are collapsed.
        return math.ceil(audio_duration_s * AUDIO_SAMPLE_RATE / SAMPLES_PER_UNIT)

    @classmethod
    def post_process_output(cls, text: str) -> str:
        return text.strip()


DyninOmniModelLM = DyninOmniForMaskedDiffusion
