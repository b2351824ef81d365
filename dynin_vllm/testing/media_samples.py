"""Synthetic media for the demo, the tests and the benchmarks."""

from __future__ import annotations

import io

import numpy as np

SPEECH_RATE = 16000


def speech_like(seed: int, seconds: float = 2.0, rate: int = SPEECH_RATE) -> np.ndarray:
    """A gliding tone in noise (float32 mono): different units for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * (150 + 90 * seed) * t * (1 + t))
    return (0.3 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def audio_bytes(
    samples: np.ndarray, rate: int = SPEECH_RATE, fmt: str = "WAV"
) -> bytes:
    """``samples`` (``[n]`` or ``[n, channels]``) encoded as a ``fmt`` file
    (any format libsndfile writes: WAV, FLAC, OGG, MP3)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


#: PyAV (container, codec) of the compressed formats libsndfile cannot write.
PYAV_FORMATS = {"M4A": ("ipod", "aac"), "WEBM": ("webm", "libopus")}


def pyav_audio_bytes(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """Mono ``samples`` encoded with PyAV as ``fmt`` (``M4A``: AAC, ``WEBM``:
    Opus)."""
    import av

    container, codec = PYAV_FORMATS[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :],
            format="flt",
            layout="mono",
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()
