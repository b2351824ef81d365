"""Images and videos <-> MAGVIT-v2 codes, with upstream pre/post-processing.

>>> tok = ImageTokenizer.from_pretrained()          # $DYNIN_MAGVIT_PATH or the hub
>>> codes = tok.encode(["cat.jpg"], resolution=336)  # [1, 441] (21 x 21 grid)
>>> images = tok.decode(codes)                       # uint8 [1, 336, 336, 3]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.magvit2 import MAGVIT_WEIGHTS_NAME, MagvitV2
from dynin_vllm.multimodal.media import (
    DEFAULT_VIDEO_FRAMES,
    FileInput,
    ImageInput,
    as_input_list,
    load_video_frames,
    postprocess_images,
    preprocess_image,
)

#: Deterministic LFQ buffers; rebuilt by the constructor if a file lacks them.
MAGVIT_OPTIONAL_BUFFERS: tuple[str, ...] = ("quantize.embedding", "quantize.power_vals")
#: Default resolution for understanding inputs (Dynin MMU / I2I: 21 x 21 codes).
DEFAULT_RESOLUTION = 336


def load_magvit2(
    path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> MagvitV2:
    """Build :class:`MagvitV2` and load ``pytorch_model.safetensors`` strictly.

    ``path``: checkpoint directory or hub id; defaults to ``$DYNIN_MAGVIT_PATH``,
    then ``snu-aidas/magvitv2``.
    """
    directory = loading.resolve_checkpoint_dir(
        path,
        env_var=loading.MAGVIT_PATH_ENV,
        default_repo=loading.MAGVIT_DEFAULT_REPO,
        revision=revision,
    )
    config = loading.read_config(directory)
    try:
        model = MagvitV2.from_config(config)
    except (TypeError, ValueError) as exc:
        raise loading.CheckpointError(
            f"bad MAGVIT-v2 config in {directory}: {exc}"
        ) from exc
    state_dict = loading.read_state_dict(directory, (MAGVIT_WEIGHTS_NAME,))
    loading.load_state_dict_strict(
        model,
        state_dict,
        optional=MAGVIT_OPTIONAL_BUFFERS,
        source=f"MAGVIT-v2 checkpoint {directory}",
    )
    model.eval()
    if device is not None:
        model.to(device)
    return model


class ImageTokenizer:
    """MAGVIT-v2 plus the image/video handling of Dynin-Omni's reference scripts."""

    def __init__(self, model: MagvitV2, resolution: int = DEFAULT_RESOLUTION) -> None:
        self.model = model
        self.resolution = resolution

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        resolution: int = DEFAULT_RESOLUTION,
        revision: str | None = None,
        device: str | torch.device | None = None,
    ) -> ImageTokenizer:
        """Load the network (see :func:`load_magvit2`) and wrap it."""
        return cls(load_magvit2(path, revision=revision, device=device), resolution)

    @property
    def codebook_size(self) -> int:
        """Number of image codes (8,192)."""
        return self.model.codebook_size

    def grid_size(self, resolution: int | None = None) -> tuple[int, int]:
        """Token grid of a square ``resolution`` input (336 -> (21, 21))."""
        r = resolution or self.resolution
        return self.model.grid_size(r, r)

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        resolution: int | None = None,
        *,
        mode: str = "crop",
    ) -> torch.Tensor:
        """Images -> ``[B, 3, R, R]`` in ``[-1, 1]`` (see :func:`preprocess_image`)."""
        r = resolution or self.resolution
        return torch.stack(
            [preprocess_image(img, r, mode=mode) for img in as_input_list(images)]
        )

    def encode(
        self,
        images: ImageInput | Sequence[ImageInput],
        resolution: int | None = None,
        *,
        mode: str = "crop",
    ) -> torch.Tensor:
        """Images (paths, bytes, PIL images, uint8 arrays) -> codes ``[B, (R/16)**2]``.

        Images are resized and centre-cropped (``mode="crop"``) or squashed.
        """
        return self.model.encode(self.preprocess(images, resolution, mode=mode))

    def encode_pixels(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Already-normalised pixels ``[B, 3, H, W]`` (any size divisible by 16) ->
        ``(codes [B, h*w], (h, w))``."""
        grid = self.model.grid_size(pixels.shape[-2], pixels.shape[-1])
        return self.model.encode(pixels), grid

    def encode_video(
        self,
        video: FileInput,
        num_frames: int = DEFAULT_VIDEO_FRAMES,
        resolution: int | None = None,
    ) -> torch.Tensor:
        """Video -> per-frame codes ``[num_frames, (R/16)^2]`` for uniformly sampled
        frames (concatenate them row by row for the ``<|soi|> ... <|eoi|>`` span)."""
        frames = load_video_frames(video, num_frames)
        return self.encode(frames, resolution)

    def decode(
        self, codes: torch.Tensor | Sequence[Any], grid: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Codes ``[B, N]`` -> uint8 images ``[B, 16h, 16w, 3]`` (square grid unless
        ``grid=(h, w)``)."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        return postprocess_images(self.model.decode(codes, grid))
