"""vLLM's multimodal processor for Dynin-Omni's image understanding.

Upstream's image-understanding prompt (``dynin.md`` §4.2,
``validation/mmu_generate.py``) puts the image before the text:

    <|mmu|> <|soi|> codes x N <|eoi|> BOS tokenize(CHAT(question))

The processor builds exactly that from what vLLM hands it (the rendered chat
prompt, or a completion prompt, as token ids; and the image):

1. the image is resized (shorter side) and centre-cropped to
   ``image_resolution`` (default 336, ``mm_processor_kwargs`` per request or
   ``--mm-processor-kwargs`` per server) and normalized to [-1, 1], as
   upstream's ``image_transform``; ``N = (resolution / 16)^2`` (441 at 336);
2. the prompt gets exactly one leading BOS (a chat template's BOS, or none);
3. ``<|mmu|> <|soi|> PH x N <|eoi|>`` is inserted in front of it.

The ``PH`` positions are placeholders: the engine replaces their embeddings
with the embeddings of the image's MAGVIT-v2 code ids, which the model
computes from the pixels inside the engine (``LLaDAForMaskedDiffusion.
embed_multimodal``). The text-vocabulary size (the code-id offset) travels
with the pixels, taken from the tokenizer as upstream computes it.

Chat: image parts add no text (``get_placeholder_str`` is ``None``); the
image goes first whatever its place in the message. One image per prompt,
as upstream trains. LLaDA and MMaDA checkpoints stay text-only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptIndexTargets,
    PromptInsertion,
    PromptUpdateDetails,
)

from dynin_vllm.configs import IMAGE_MODEL_TYPES
from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.magvit2 import DOWNSAMPLE_FACTOR
from dynin_vllm.multimodal.media import MediaError, load_image, preprocess_image

BOS = 126080
MMU, SOI, EOI = 126089, 126084, 126085
#: The image placeholder id: a reserved LLaDA slot no Dynin prompt uses (not
#: the mask id, which infilling would treat as a hole).
IMAGE_PLACEHOLDER_ID = 126110

#: ``mm_processor_kwargs`` key of the image resolution, its default and range.
RESOLUTION_KEY = "image_resolution"
DEFAULT_RESOLUTION = 336
MAX_RESOLUTION = 512


def image_tokens(resolution: int) -> int:
    """Placeholders (MAGVIT-v2 codes) of a square image of ``resolution``."""
    side = resolution // DOWNSAMPLE_FACTOR
    return side * side


def check_resolution(value: Any) -> int:
    """``image_resolution`` as an int, or ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{RESOLUTION_KEY} must be an integer, got {value!r}")
    if not DOWNSAMPLE_FACTOR <= value <= MAX_RESOLUTION or value % DOWNSAMPLE_FACTOR:
        raise ValueError(
            f"{RESOLUTION_KEY} must be a multiple of {DOWNSAMPLE_FACTOR} in "
            f"[{DOWNSAMPLE_FACTOR}, {MAX_RESOLUTION}], got {value}"
        )
    return value


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
        return {"image": 1} if self.serves_images() else {}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        if not self.serves_images():
            return {}
        return {"image": image_tokens(self.resolution({}))}

    def resolution(self, request_kwargs: Mapping[str, object]) -> int:
        """The image resolution of a request: its own, the server's, 336."""
        merged = self.ctx.get_merged_mm_kwargs(request_kwargs)
        return check_resolution(merged.get(RESOLUTION_KEY, DEFAULT_RESOLUTION))

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
        return {
            "image": self._get_dummy_images(
                width=size,
                height=size,
                num_images=mm_counts.get("image", 0),
                overrides=(mm_options or {}).get("image"),
            )
        }


class DyninMultiModalProcessor(BaseMultiModalProcessor[DyninProcessingInfo]):
    """Pixels for the engine, and upstream's image-first prompt layout."""

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        reason = _image_codec_available(self.info.ctx.model_config.model)
        if reason is not None:
            raise ValueError(f"image input is not available: {reason}")
        resolution = self.info.resolution(hf_kwargs)
        pixels = []
        for index, image in enumerate(hf_data.get("images", [])):
            try:
                pixels.append(preprocess_image(load_image(image), resolution))
            except MediaError as exc:
                raise ValueError(f"image {index}: {exc}") from exc
        offset = len(self.info.get_tokenizer())
        return BatchFeature(
            {
                "pixel_values": torch.stack(pixels),
                "image_code_offset": torch.full((len(pixels),), offset),
            }
        )

    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_code_offset": MultiModalFieldConfig.batched("image"),
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
    ) -> Sequence[PromptInsertion]:
        count = image_tokens(self.info.resolution(hf_processor_mm_kwargs))
        span = [MMU, SOI, *[IMAGE_PLACEHOLDER_ID] * count, EOI]
        return [
            PromptInsertion(
                modality="image",
                target=PromptIndexTargets.start(),
                insertion=PromptUpdateDetails.select_token_id(
                    span, embed_token_id=IMAGE_PLACEHOLDER_ID
                ),
            )
        ]
