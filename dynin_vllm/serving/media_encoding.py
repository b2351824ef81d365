"""Generated media as the bytes the OpenAI endpoints return.

Images: PNG, JPEG or WebP (Pillow). Audio: WAV and FLAC (libsndfile), raw
16-bit PCM, and MP3, Opus (in Ogg) and AAC (ADTS) through PyAV, which the CPU
install already has for decoding. Nothing here needs torchaudio.
"""

from __future__ import annotations

import base64
import io

import numpy as np

IMAGE_FORMATS = ("png", "jpeg", "webp")
AUDIO_FORMATS = ("wav", "flac", "pcm", "mp3", "opus", "aac")

AUDIO_MEDIA_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}

#: PyAV container, codec and sample rate of the compressed formats (Opus takes
#: 48 kHz; the encoder resamples).
_PYAV = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", None),
}


def image_bytes(pixels: np.ndarray, fmt: str) -> bytes:
    """A ``[H, W, 3]`` uint8 image encoded as ``fmt``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def image_b64(pixels: np.ndarray, fmt: str) -> str:
    return base64.b64encode(image_bytes(pixels, fmt)).decode()


def audio_bytes(waveform: np.ndarray, rate: int, fmt: str) -> bytes:
    """Mono float ``waveform`` in [-1, 1] at ``rate`` Hz encoded as ``fmt``."""
    wave = np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if fmt == "pcm":
        return (wave * 32767.0).round().astype("<i2").tobytes()
    if fmt in ("wav", "flac"):
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, wave, rate, format=fmt.upper(), subtype="PCM_16")
        return buffer.getvalue()
    if fmt not in _PYAV:
        raise ValueError(f"unknown audio format {fmt!r}; choose from {AUDIO_FORMATS}")
    import av

    container, codec, codec_rate = _PYAV[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=codec_rate or rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        packets = [*stream.encode(frame), *stream.encode(None)]
        for packet in packets:
            out.mux(packet)
    return buffer.getvalue()


__all__ = [
    "AUDIO_FORMATS",
    "AUDIO_MEDIA_TYPES",
    "IMAGE_FORMATS",
    "audio_bytes",
    "image_b64",
    "image_bytes",
]
