"""Keep vLLM's logs readable on CPU installs.

Without torchcodec (the CPU install removes its CUDA-only wheel) vLLM's audio
loader warns on every clip that it falls back to libsndfile / PyAV. The
fallback is the intended path here, so the warning is kept once per process.
"""

from __future__ import annotations

import logging

AUDIO_LOGGER = "vllm.multimodal.media.audio"
_FALLBACK = "torchcodec unavailable"


class OncePerProcess(logging.Filter):
    """Pass the first record whose message starts with ``prefix``, drop the
    later ones; other records pass."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def log_torchcodec_fallback_once() -> None:
    """Install the filter on vLLM's audio logger (idempotent)."""
    logger = logging.getLogger(AUDIO_LOGGER)
    if not any(isinstance(f, OncePerProcess) for f in logger.filters):
        logger.addFilter(OncePerProcess(_FALLBACK))
