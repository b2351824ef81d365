"""Image, video and audio loading plus the upstream pre/post-processing.

* Images: ``PIL.Image.open(...).convert("RGB")``, then torchvision's
  ``Resize(R, BICUBIC)`` (shorter side) + ``CenterCrop(R)`` + ``ToTensor`` +
  ``Normalize(0.5, 0.5)`` -> ``[-1, 1]`` (Dynin ``training/utils.py image_transform``),
  re-done with PIL and numpy so torchvision is not needed. ``mode="squash"`` is
  ``image_transform_squash`` (resize to ``R x R`` without cropping).
* Video: decoded with OpenCV, ``n`` frames picked uniformly with
  ``np.linspace(0, T - 1, n).astype(int)``, BGR -> RGB.
* Audio: read with soundfile as float32, averaged to mono, resampled with soxr.

Every failure to read or interpret an input raises :class:`MediaError` (a
``ValueError``) whose message names the file or field.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

#: Anything :func:`load_image` accepts.
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray
#: Anything :func:`load_audio` / :func:`load_video_frames` accept.
FileInput = str | os.PathLike | bytes | BinaryIO

#: EMOVA's speech encoder consumes 16 kHz audio.
SPEECH_INPUT_SAMPLE_RATE = 16000
#: Default number of frames sampled from a video (Dynin demo ``mmu_v2t_num_frames``).
DEFAULT_VIDEO_FRAMES = 5
#: soxr quality used for resampling (see :func:`resample_audio`).
RESAMPLE_QUALITY = "VHQ"


class MediaError(ValueError):
    """An image, video or audio input is missing, corrupt or unsupported."""


def _describe(source: Any, field: str | None = None) -> str:
    if field is not None:
        return field
    if isinstance(source, (str, os.PathLike)):
        return f"file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


# --------------------------------------------------------------------------- images


def load_image(source: ImageInput, *, field: str | None = None) -> Image.Image:
    """Load an image as RGB.

    ``source`` may be a path, encoded bytes, a PIL image or an ``HxWx3`` /
    ``HxW`` uint8 array. ``field`` names the input in error messages (defaults to
    the file name).
    """
    what = _describe(source, field)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise MediaError(
                f"{what}: expected a uint8 HxW or HxWxC array, got "
                f"{source.dtype} with shape {source.shape}"
            )
        if source.ndim == 3 and source.shape[2] not in (1, 3, 4):
            raise MediaError(f"{what}: unsupported channel count {source.shape[2]}")
        array = source[:, :, 0] if source.ndim == 3 and source.shape[2] == 1 else source
        image = Image.fromarray(np.ascontiguousarray(array))
    else:
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            raise MediaError(f"{what}: no such image file")
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with Image.open(stream) as opened:
                opened.load()  # decode now so that truncated files fail here
                return _to_rgb(opened, what)
        except MediaError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise MediaError(f"{what}: cannot decode image ({exc})") from exc
    return _to_rgb(image, what)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    if image.width <= 0 or image.height <= 0:
        raise MediaError(f"{what}: empty image")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise MediaError(f"{what}: cannot convert image to RGB ({exc})") from exc


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    # torchvision ``_compute_resized_output_size``: the longer side is truncated.
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def preprocess_image(
    image: ImageInput, resolution: int = 336, *, mode: str = "crop"
) -> torch.Tensor:
    """Turn one image into MAGVIT-v2 input ``[3, R, R]`` float32 in ``[-1, 1]``.

    ``mode="crop"``: resize the shorter side to ``R`` (bicubic), centre-crop.
    ``mode="squash"``: resize straight to ``R x R`` (bicubic).
    """
    if resolution <= 0 or resolution % 16:
        raise ValueError(
            f"resolution must be a positive multiple of 16, got {resolution}"
        )
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        image = load_image(image)
    if mode == "crop":
        image = _center_crop(_resize_shorter_side(image, resolution), resolution)
    elif mode == "squash":
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    else:
        raise ValueError(f"unknown resize mode {mode!r} (expected 'crop' or 'squash')")
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return (tensor - 0.5) / 0.5


def postprocess_images(pixels: torch.Tensor) -> np.ndarray:
    """Decoder output ``[B, 3, H, W]`` -> uint8 ``[B, H, W, 3]``.

    ``clamp((x + 1) / 2, 0, 1) * 255`` then truncation to uint8, as upstream.
    """
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(
            f"expected pixels of shape [B, 3, H, W], got {tuple(pixels.shape)}"
        )
    scaled = torch.clamp((pixels.float() + 1.0) / 2.0, min=0.0, max=1.0) * 255.0
    return scaled.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


# --------------------------------------------------------------------------- video


def sample_frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Uniform frame indices ``np.linspace(0, T - 1, n).astype(int)``."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return np.linspace(0, total_frames - 1, num_frames).astype(int)


def _video_path(source: FileInput, stack: list[str]) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    data = source if isinstance(source, bytes) else source.read()
    with tempfile.NamedTemporaryFile(suffix=".video", delete=False) as handle:
        handle.write(data)
    stack.append(handle.name)
    return handle.name


def load_video_frames(
    source: FileInput,
    num_frames: int = DEFAULT_VIDEO_FRAMES,
    *,
    field: str | None = None,
) -> list[Image.Image]:
    """Decode a video with OpenCV; return ``num_frames`` uniformly sampled RGB frames.

    Like upstream, a video with fewer decodable frames than ``num_frames`` is an
    error. Frames are counted in a first pass and only the chosen ones are kept.
    """
    import cv2

    what = _describe(source, field)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise MediaError(f"{what}: no such video file")
    temporaries: list[str] = []
    try:
        path = _video_path(source, temporaries)
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise MediaError(f"{what}: cannot open video")
        total = 0
        try:
            while capture.grab():
                total += 1
        finally:
            capture.release()
        if total == 0:
            raise MediaError(f"{what}: no decodable video frames")
        if total < num_frames:
            raise MediaError(f"{what}: has {total} frames, {num_frames} required")
        wanted = sample_frame_indices(total, num_frames)
        frames = _read_frames(cv2, path, wanted, what)
    finally:
        for name in temporaries:
            os.unlink(name)
    return [frames[int(i)] for i in wanted]


def _read_frames(
    cv2: Any, path: str, wanted: np.ndarray, what: str
) -> dict[int, Image.Image]:
    needed = {int(i) for i in wanted}
    last = max(needed)
    frames: dict[int, Image.Image] = {}
    capture = cv2.VideoCapture(path)
    try:
        for index in range(last + 1):
            if not capture.grab():
                raise MediaError(
                    f"{what}: frame {index} disappeared on the second pass"
                )
            if index in needed:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    raise MediaError(f"{what}: cannot decode frame {index}")
                frames[index] = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


# --------------------------------------------------------------------------- audio


def load_audio(
    source: FileInput,
    target_sample_rate: int | None = SPEECH_INPUT_SAMPLE_RATE,
    *,
    field: str | None = None,
) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32, optionally resampled.

    Returns ``(samples, sample_rate)``. Multi-channel audio is averaged (as
    ``librosa.load(mono=True)``); ``target_sample_rate=None`` keeps the file rate.
    """
    import soundfile as sf

    what = _describe(source, field)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise MediaError(f"{what}: no such audio file")
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise MediaError(f"{what}: cannot decode audio ({exc})") from exc
    if data.shape[0] == 0:
        raise MediaError(f"{what}: audio holds no samples")
    samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    samples = validate_waveform(samples, field=what)
    if target_sample_rate is not None and rate != target_sample_rate:
        samples = resample_audio(samples, rate, target_sample_rate)
        rate = target_sample_rate
    return samples, int(rate)


def validate_waveform(samples: Any, *, field: str = "waveform") -> np.ndarray:
    """Return ``samples`` as a finite 1-D float32 array or raise :class:`MediaError`."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    array = np.asarray(samples)
    if array.ndim != 1:
        raise MediaError(f"{field}: expected a 1-D waveform, got shape {array.shape}")
    if array.size == 0:
        raise MediaError(f"{field}: waveform is empty")
    if not np.issubdtype(array.dtype, np.floating):
        raise MediaError(f"{field}: expected float samples, got {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise MediaError(f"{field}: waveform contains NaN or infinite samples")
    return array


def resample_audio(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr and fix the length to ``ceil(n * target / orig)``.

    The length rule is ``librosa.resample(fix=True)``'s; upstream (librosa 0.8)
    filters with resampy ``kaiser_best``, here soxr's very-high-quality sinc.
    """
    import soxr

    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(
            f"sample rates must be positive, got {orig_rate} -> {target_rate}"
        )
    if orig_rate == target_rate:
        return samples
    out = soxr.resample(samples, orig_rate, target_rate, quality=RESAMPLE_QUALITY)
    length = math.ceil(samples.shape[-1] * float(target_rate) / orig_rate)
    if out.shape[-1] < length:
        out = np.pad(out, (0, length - out.shape[-1]))
    return np.ascontiguousarray(out[:length], dtype=np.float32)


def as_input_list(sources: Sequence[Any] | Any) -> list[Any]:
    """Normalise a single input or a sequence of inputs to a list."""
    if isinstance(sources, (str, os.PathLike, bytes, Image.Image, np.ndarray, Path)):
        return [sources]
    return list(sources)
