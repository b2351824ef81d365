"""vLLM's multimodal processor for Dynin-Omni's image, video and speech
understanding.

Upstream's understanding prompts (``dynin.md`` §4.2-§4.4,
``validation/mmu_generate.py``, ``validation/speech.py``) put the media before
the text:

    <|mmu|> <|soi|> codes x N <|eoi|> BOS tokenize(CHAT(question))
    <|v2t|> <|soi|> frame 1 codes ... frame F codes <|eoi|> BOS tokenize(...)
    <|s2t|> <|soa|> speech units <|eoa|> tokenize(CHAT(instruction))

The processor builds exactly that from what vLLM hands it (the rendered chat
prompt, or a completion prompt, as token ids; and the image):

1. the image is resized (shorter side) and centre-cropped to
   ``image_resolution`` (default 336, ``mm_processor_kwargs`` per request or
   ``--mm-processor-kwargs`` per server) and normalized to [-1, 1], as
   upstream's ``image_transform``; ``N = (resolution / 16)^2`` (441 at 336);
2. the prompt gets exactly one leading BOS (a chat template's BOS, or none);
3. ``<|mmu|> <|soi|> PH x N <|eoi|>`` is inserted in front of it.

A video is ``video_num_frames`` frames (default 5) sampled uniformly
(``np.linspace(0, T - 1, F).astype(int)``, upstream's cv2 sampling) and each
processed as an image at ``video_resolution`` (default 224: 196 codes per
frame); their codes share one ``<|soi|> ... <|eoi|>`` span. vLLM's video
loader already samples the frames it decodes (the config hook makes it
decode ``video_num_frames`` frames by the same rule, see
``dynin_vllm.engine.config_hook``); frames given directly are sampled here.

The ``PH`` positions are placeholders: the engine replaces their embeddings
with the embeddings of the image's MAGVIT-v2 code ids, which the model
computes from the pixels inside the engine (``LLaDAForMaskedDiffusion.
embed_multimodal``). The text-vocabulary size (the code-id offset) travels
with the pixels, taken from the tokenizer as upstream computes it.

Audio arrives as 16 kHz mono (vLLM's audio parser resamples it with PyAV,
the resampler its transcription endpoint uses, so both routes give the same
units). EMOVA S2U turns it into units here, in the processor, not in the
engine: see ``dynin_vllm.multimodal.speech_units`` for why. Their vocabulary
ids (``len(tokenizer) + 8192 + unit``) travel with the request, and the span
``<|s2t|> <|soa|> PH x units <|eoa|>`` replaces the prompt's BOS (upstream
puts none before the speech-recognition text, and the tokenizer adds none).
At most 512 units (20.48 s) per prompt.

Chat: media parts add no text (``get_placeholder_str`` is ``None``); the
image goes first whatever its place in the message. One image per prompt,
as upstream trains (an image and a video together are refused once the
request is rendered, ``dynin_vllm.engine.validation``). LLaDA and MMaDA
checkpoints stay text-only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptIndexTargets,
    PromptInsertion,
    PromptReplacement,
    PromptUpdateDetails,
)

from dynin_vllm.configs import IMAGE_MODEL_TYPES
from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.ids import IMAGE_CODEBOOK_SIZE
from dynin_vllm.multimodal.magvit2 import DOWNSAMPLE_FACTOR
from dynin_vllm.multimodal.media import (
    MediaError,
    load_image,
    preprocess_image,
    sample_frame_indices,
)
from dynin_vllm.multimodal.settings import (
    AUDIO_SAMPLE_RATE,
    DEFAULT_RESOLUTION,
    DEFAULT_VIDEO_FRAMES,
    DEFAULT_VIDEO_RESOLUTION,
    MAX_AUDIO_SAMPLES,
    MAX_AUDIO_UNITS,
    MAX_RESOLUTION,
    MAX_VIDEO_FRAMES,
    RESOLUTION_KEY,
    VIDEO_FRAMES_KEY,
    VIDEO_RESOLUTION_KEY,
)
from dynin_vllm.multimodal.speech_units import speech_encoder_for

BOS = 126080
MMU, SOI, EOI, V2T = 126089, 126084, 126085, 126100
S2T, SOA, EOA = 126096, 126097, 126098
#: The media placeholder id: a reserved LLaDA slot no Dynin prompt uses (not
#: the mask id, which infilling would treat as a hole).
MEDIA_PLACEHOLDER_ID = 126110


def image_tokens(resolution: int) -> int:
    """Placeholders (MAGVIT-v2 codes) of a square image of ``resolution``."""
    side = resolution // DOWNSAMPLE_FACTOR
    return side * side


def check_resolution(value: Any, key: str = RESOLUTION_KEY) -> int:
    """A resolution as an int, or ``ValueError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if not DOWNSAMPLE_FACTOR <= value <= MAX_RESOLUTION or value % DOWNSAMPLE_FACTOR:
        raise ValueError(
            f"{key} must be a multiple of {DOWNSAMPLE_FACTOR} in "
            f"[{DOWNSAMPLE_FACTOR}, {MAX_RESOLUTION}], got {value}"
        )
    return value


def check_frames(value: Any) -> int:
    """``video_num_frames`` as an int, or ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{VIDEO_FRAMES_KEY} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_VIDEO_FRAMES:
        raise ValueError(
            f"{VIDEO_FRAMES_KEY} must be in [1, {MAX_VIDEO_FRAMES}], got {value}"
        )
    return value


def sample_video(frames: Any, num_frames: int) -> list[Any]:
    """``num_frames`` frames of ``frames`` sampled as upstream samples a video."""
    total = len(frames)
    if total < num_frames:
        raise ValueError(
            f"video: has {total} frames, {VIDEO_FRAMES_KEY}={num_frames} required "
            "(a video URL is decoded to as many frames as --media-io-kwargs "
            '\'{"video": {"num_frames": N}}\' says)'
        )
    if total == num_frames:
        return list(frames)
    return [frames[int(i)] for i in sample_frame_indices(total, num_frames)]


def _as_image(frame: Any) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame
    return Image.fromarray(np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)))


@functools.cache
def _image_codec_available(model: str) -> str | None:
    """``None`` when the model's MAGVIT-v2 weights can be found, else why not."""
    try:
        loading.locate_codec(
            model,
            env_var=loading.MAGVIT_PATH_ENV,
            subdir=loading.MAGVIT_SUBDIR,
            default_repo=loading.MAGVIT_DEFAULT_REPO,
        )
    except loading.CheckpointError as exc:
        return str(exc)
    return None


class DyninProcessingInfo(BaseProcessingInfo):
    """What vLLM asks about Dynin-Omni's media inputs before processing."""

    def serves_images(self) -> bool:
        return self.get_hf_config().model_type in IMAGE_MODEL_TYPES

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        if not self.serves_images():
            return {}
        return {"image": 1, "video": 1, "audio": 1}

    def get_data_parser(self) -> MultiModalDataParser:
        # Audio at the S2U rate, resampled as the transcription endpoint does.
        return MultiModalDataParser(
            target_sr=AUDIO_SAMPLE_RATE,
            audio_resample_method="pyav",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        if not self.serves_images():
            return {}
        return {
            "image": image_tokens(self.resolution({})),
            "video": self.video_frames({}) * image_tokens(self.video_resolution({})),
            "audio": MAX_AUDIO_UNITS,
        }

    def _setting(self, request_kwargs: Mapping[str, object], key: str, default: int):
        merged = self.ctx.get_merged_mm_kwargs(request_kwargs)
        return merged.get(key, default)

    def resolution(self, request_kwargs: Mapping[str, object]) -> int:
        """The image resolution of a request: its own, the server's, 336."""
        value = self._setting(request_kwargs, RESOLUTION_KEY, DEFAULT_RESOLUTION)
        return check_resolution(value)

    def video_resolution(self, request_kwargs: Mapping[str, object]) -> int:
        """The video frame resolution: the request's, the server's, 224."""
        value = self._setting(
            request_kwargs, VIDEO_RESOLUTION_KEY, DEFAULT_VIDEO_RESOLUTION
        )
        return check_resolution(value, VIDEO_RESOLUTION_KEY)

    def video_frames(self, request_kwargs: Mapping[str, object]) -> int:
        """Frames per video: the request's, the server's, 5."""
        value = self._setting(request_kwargs, VIDEO_FRAMES_KEY, DEFAULT_VIDEO_FRAMES)
        return check_frames(value)

    def get_hf_processor(self, **kwargs: object) -> Any:
        raise RuntimeError("Dynin-Omni has no Hugging Face processor")


class DyninDummyInputsBuilder(BaseDummyInputsBuilder[DyninProcessingInfo]):
    """The largest input, for vLLM's start-up profiling."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        size = self.info.resolution({})
        frame = self.info.video_resolution({})
        return {
            "image": self._get_dummy_images(
                width=size,
                height=size,
                num_images=mm_counts.get("image", 0),
                overrides=(mm_options or {}).get("image"),
            ),
            "video": self._get_dummy_videos(
                width=frame,
                height=frame,
                num_frames=self.info.video_frames({}),
                num_videos=mm_counts.get("video", 0),
                overrides=(mm_options or {}).get("video"),
            ),
            "audio": self._get_dummy_audios(
                length=MAX_AUDIO_SAMPLES,
                num_audios=mm_counts.get("audio", 0),
                overrides=(mm_options or {}).get("audio"),
            ),
        }


class DyninMultiModalProcessor(BaseMultiModalProcessor[DyninProcessingInfo]):
    """Pixels for the engine, and upstream's image-first prompt layout."""

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        # (One item per prompt is a request rule: engine.validation checks it.)
        images, videos = hf_data.get("images") or [], hf_data.get("videos") or []
        features: dict[str, Any] = {}
        audios = hf_data.get("audio") or []
        if audios:
            features.update(self._speech_features(audios))
        if not images and not videos:
            return BatchFeature(features)
        reason = _image_codec_available(self.info.ctx.model_config.model)
        if reason is not None:
            kind = "image" if images else "video"
            raise ValueError(f"{kind} input is not available: {reason}")
        offset = len(self.info.get_tokenizer())
        if images:
            resolution = self.info.resolution(hf_kwargs)
            pixels = [
                _preprocess(image, resolution, f"image {i}")
                for i, image in enumerate(images)
            ]
            features["pixel_values"] = torch.stack(pixels)
            features["image_code_offset"] = torch.full((len(pixels),), offset)
        if videos:
            resolution = self.info.video_resolution(hf_kwargs)
            count = self.info.video_frames(hf_kwargs)
            clips = []
            for i, video in enumerate(videos):
                frames = video[0] if isinstance(video, tuple) else video
                clips.append(
                    torch.stack(
                        [
                            _preprocess(frame, resolution, f"video {i}")
                            for frame in sample_video(frames, count)
                        ]
                    )
                )
            features["video_pixel_values"] = torch.stack(clips)
            features["video_code_offset"] = torch.full((len(clips),), offset)
        return BatchFeature(features)

    def _speech_features(self, audios: Sequence[Any]) -> dict[str, Any]:
        """Each audio's speech-unit vocabulary ids (EMOVA S2U, reduced)."""
        encoder = speech_encoder_for(self.info.ctx.model_config.model)
        if isinstance(encoder, str):
            raise ValueError(f"audio input is not available: {encoder}")
        offset = len(self.info.get_tokenizer()) + IMAGE_CODEBOOK_SIZE
        ids = []
        for i, audio in enumerate(audios):
            waveform = audio[0] if isinstance(audio, tuple) else audio
            try:
                units = encoder.units(waveform, what=f"audio {i}")
            except MediaError as exc:
                raise ValueError(str(exc)) from exc
            ids.append(torch.tensor(units, dtype=torch.long) + offset)
        return {"audio_ids": ids}

    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_code_offset": MultiModalFieldConfig.batched("image"),
            "video_pixel_values": MultiModalFieldConfig.batched("video"),
            "video_code_offset": MultiModalFieldConfig.batched("video"),
            "audio_ids": MultiModalFieldConfig.batched("audio"),
        }

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        start = 0
        while start < len(prompt) and prompt[start] == BOS:
            start += 1
        return [BOS, *prompt[start:]]

    def _get_prompt_updates(
        self,
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: Any,
    ) -> Sequence[PromptInsertion | PromptReplacement]:
        counts = mm_items.get_all_counts()
        updates = []
        if counts.get("image"):
            codes = image_tokens(self.info.resolution(hf_processor_mm_kwargs))
            updates.append(_media_span("image", MMU, codes))
        if counts.get("video"):
            kwargs = hf_processor_mm_kwargs
            frame = image_tokens(self.info.video_resolution(kwargs))
            updates.append(
                _media_span("video", V2T, self.info.video_frames(kwargs) * frame)
            )
        if counts.get("audio"):
            items = out_mm_kwargs["audio"]

            def speech_span(index: int) -> PromptUpdateDetails:
                units = int(items[index]["audio_ids"].data.numel())
                span = [S2T, SOA, *[MEDIA_PLACEHOLDER_ID] * units, EOA]
                return PromptUpdateDetails.select_token_id(
                    span, embed_token_id=MEDIA_PLACEHOLDER_ID
                )

            # The span takes the place of the BOS that _postprocess_prompt
            # leaves first: upstream's ASR prompt has no BOS.
            updates.append(
                PromptReplacement(
                    modality="audio", target=[BOS], replacement=speech_span
                )
            )
        return updates


def _preprocess(image: Any, resolution: int, what: str) -> torch.Tensor:
    try:
        return preprocess_image(load_image(_as_image(image)), resolution)
    except MediaError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def _media_span(modality: str, task_token: int, codes: int) -> PromptInsertion:
    """``task <|soi|> PH x codes <|eoi|>``, inserted at the prompt's start."""
    span = [task_token, SOI, *[MEDIA_PLACEHOLDER_ID] * codes, EOI]
    return PromptInsertion(
        modality=modality,
        target=PromptIndexTargets.start(),
        insertion=PromptUpdateDetails.select_token_id(
            span, embed_token_id=MEDIA_PLACEHOLDER_ID
        ),
    )
