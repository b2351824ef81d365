"""What the understanding processor does to media before the engine sees it.

Pure functions of ``dynin_vllm.multimodal`` (no engine): image modes are
converted, animated images give their first frame, bad images are refused
with an error naming them, and videos are sampled as upstream samples them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dynin_vllm.multimodal.media import MediaError, load_image, preprocess_image
from dynin_vllm.multimodal.processor import (
    check_frames,
    check_resolution,
    image_tokens,
    sample_video,
)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "L", "LA", "RGBA", "1"])
def test_every_image_mode_becomes_rgb_input(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    converted = image.convert(mode) if mode != "I;16" else image.convert("I;16")
    pixels = preprocess_image(converted, 32)
    assert pixels.shape == (3, 32, 32)
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0


def test_an_animated_image_gives_its_first_frame():
    first = Image.new("RGB", (16, 16), (255, 0, 0))
    second = Image.new("RGB", (16, 16), (0, 0, 255))
    data = _encoded(first, "GIF", save_all=True, append_images=[second])
    assert load_image(data).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image at all", "cannot decode image"),
        (_encoded(Image.new("RGB", (64, 64)), "PNG")[:60], "cannot decode image"),
    ],
)
def test_corrupt_and_truncated_images_are_named(data, message):
    with pytest.raises(MediaError, match=message):
        load_image(data, field="messages[0].content[0]")


def test_a_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encoded(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(MediaError, match="image"):
        load_image(data)


def test_video_frames_are_sampled_as_upstream():
    frames = list(range(17))
    assert sample_video(frames, 5) == [0, 4, 8, 12, 16]
    assert sample_video(frames[:5], 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="video_num_frames=5"):
        sample_video(frames[:3], 5)


def test_resolutions_and_frame_counts_are_checked_by_name():
    assert image_tokens(336) == 441 and image_tokens(224) == 196
    assert check_resolution(480) == 480
    for bad in (50, 0, 1024, "336", True):
        with pytest.raises(ValueError, match="image_resolution"):
            check_resolution(bad)
    with pytest.raises(ValueError, match="video_resolution"):
        check_resolution(20, "video_resolution")
    for bad in (0, 33, 2.5):
        with pytest.raises(ValueError, match="video_num_frames"):
            check_frames(bad)


def test_the_torchcodec_fallback_warning_is_logged_once_per_process():
    """vLLM warns on every clip that torchcodec is missing; the plugin keeps
    the first warning and passes every other record."""
    import logging

    import dynin_vllm
    from dynin_vllm.serving.log_filters import AUDIO_LOGGER, OncePerProcess

    once = OncePerProcess("torchcodec unavailable")

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, "", 0, message, (), None)

    fallback = "torchcodec unavailable (%r); falling back to soundfile/PyAV."
    assert [once.filter(record(fallback)) for _ in range(3)] == [True, False, False]
    assert once.filter(record("Failed to load audio via soundfile"))
    dynin_vllm.register()
    filters = logging.getLogger(AUDIO_LOGGER).filters
    assert sum(isinstance(f, OncePerProcess) for f in filters) == 1
