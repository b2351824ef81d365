"""The media encoders the model runs inside the engine.

Image and video understanding: MAGVIT-v2 turns each image's (or video
frame's) pixels into codes, which
become vocabulary ids (``len(tokenizer) + code``, the offset travelling with
the pixels from the processor) and then ordinary token embeddings; the
embeddings replace the prompt's image placeholders (see
``dynin_vllm.multimodal.processor``).

The encoder is found as ``dynin_vllm.multimodal.loading.locate_codec`` says
(``DYNIN_MAGVIT_PATH``, the model directory's ``magvitv2``, the hub). It is
not part of the model's state dict, runs in float32 on the model's device,
and is batched over a step's images. Without it the model serves text only;
the processor refuses images with the same reason.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.logger import init_logger

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.image_tokenizer import load_magvit2
from dynin_vllm.multimodal.magvit2 import MagvitV2

logger = init_logger(__name__)


class ImageEncoder:
    """MAGVIT-v2 codes -> token embeddings, for a batch of images."""

    def __init__(self, magvit: MagvitV2):
        self.magvit = magvit.float().eval()

    @classmethod
    def for_model(cls, model: str | None) -> ImageEncoder | None:
        """The model's encoder, or ``None`` (logged) when it cannot be found."""
        try:
            directory = loading.locate_codec(
                model,
                env_var=loading.MAGVIT_PATH_ENV,
                subdir=loading.MAGVIT_SUBDIR,
                default_repo=loading.MAGVIT_DEFAULT_REPO,
            )
            return cls(load_magvit2(directory, device="cpu"))
        except loading.CheckpointError as exc:
            logger.warning("Image input disabled: %s", exc)
            return None

    @torch.no_grad()
    def codes(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, R, R]`` pixels in [-1, 1] -> ``[B, (R/16)^2]`` codes."""
        device = pixel_values.device
        if next(self.magvit.parameters()).device != device:
            self.magvit.to(device)
        return self.magvit.encode(pixel_values.float())

    def embed(
        self, pixel_values: Any, code_offsets: Any, embed_tokens: Any
    ) -> list[torch.Tensor]:
        """One ``[N, hidden]`` embedding tensor per image."""
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        offsets = torch.as_tensor(code_offsets, device=pixel_values.device)
        ids = self.codes(pixel_values) + offsets.reshape(-1, 1).long()
        return list(embed_tokens(ids))

    def embed_videos(
        self, videos: Any, code_offsets: Any, embed_tokens: Any
    ) -> list[torch.Tensor]:
        """One ``[F * N, hidden]`` tensor per video ``[F, 3, R, R]``: every
        frame's codes, frame after frame, in one span."""
        if isinstance(videos, (list, tuple)):
            videos = torch.stack(list(videos))
        num_videos = videos.shape[0]
        codes = self.codes(videos.flatten(0, 1)).reshape(num_videos, -1)
        offsets = torch.as_tensor(code_offsets, device=videos.device)
        return list(embed_tokens(codes + offsets.reshape(-1, 1).long()))
