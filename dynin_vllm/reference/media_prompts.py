"""Reference prompts of the media-understanding tasks, from the media itself.

The reference pipelines of image, video and speech understanding: upstream's
frame sampling (a video file decoded with cv2, ``np.linspace`` frames), its
preprocessing
(``image_transform``: shorter side to the resolution, centre crop, [-1, 1]),
MAGVIT-v2 codes, vocabulary ids (``len(tokenizer) + code``), then upstream's
layout (:func:`dynin_vllm.reference.prompts.mmu_prompt`), built here and not
through the engine's processor. Speech: EMOVA's reduced units, ids
``len(tokenizer) + 8192 + unit``, :func:`~dynin_vllm.reference.prompts.
asr_prompt`. The codec is the production one: it is
checked against upstream's outputs on its own (``tests/multimodal``).
"""

from __future__ import annotations

from typing import Any

from dynin_vllm.multimodal.emova import EmovaSpeechTokenizer
from dynin_vllm.multimodal.magvit2 import MagvitV2
from dynin_vllm.multimodal.media import (
    load_image,
    load_video_frames,
    preprocess_image,
    sample_frame_indices,
)
from dynin_vllm.reference.prompts import IMAGE_CODEBOOK, asr_prompt, mmu_prompt


def image_codes(magvit: MagvitV2, image: Any, resolution: int = 336) -> list[int]:
    """MAGVIT-v2 codes of one image, row-major."""
    pixels = preprocess_image(load_image(image), resolution)
    return magvit.float().encode(pixels[None])[0].tolist()


def image_understanding_prompt(
    tokenizer: Any,
    magvit: MagvitV2,
    image: Any,
    question: str,
    *,
    resolution: int = 336,
) -> list[int]:
    """``<|mmu|> <|soi|> ids <|eoi|> BOS tokenize(CHAT(question))``."""
    offset = len(tokenizer)
    ids = [offset + code for code in image_codes(magvit, image, resolution)]
    return mmu_prompt(tokenizer, ids, question)


def video_understanding_prompt(
    tokenizer: Any,
    magvit: MagvitV2,
    video: Any,
    question: str,
    *,
    num_frames: int = 5,
    resolution: int = 224,
) -> list[int]:
    """``<|v2t|> <|soi|> frame codes... <|eoi|> BOS tokenize(CHAT(question))``.

    ``video``: a file path (decoded with cv2, as upstream) or its frames.
    """
    if isinstance(video, (str, bytes)) or hasattr(video, "__fspath__"):
        frames = load_video_frames(video, num_frames)
    else:
        frames = [video[int(i)] for i in sample_frame_indices(len(video), num_frames)]
    offset = len(tokenizer)
    ids = [
        offset + code
        for frame in frames
        for code in image_codes(magvit, frame, resolution)
    ]
    return mmu_prompt(tokenizer, ids, question, video=True)


def speech_recognition_prompt(
    tokenizer: Any,
    emova: EmovaSpeechTokenizer,
    audio: Any,
    instruction: str = "Transcribe the given audio.",
    *,
    sample_rate: int | None = None,
) -> list[int]:
    """``<|s2t|> <|soa|> unit ids <|eoa|> tokenize(CHAT(instruction))``.

    ``audio``: a file (read and resampled by the codec's loader) or a
    waveform with its ``sample_rate``. Units are EMOVA's reduced ones
    (``encode``), as upstream's ``s2t_eval_collate_fn`` takes them.
    """
    units = emova.encode(audio, sample_rate).tolist()
    offset = len(tokenizer) + IMAGE_CODEBOOK
    return asr_prompt(tokenizer, [offset + u for u in units], instruction)
