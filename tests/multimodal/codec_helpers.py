"""Helpers shared by the codec tests (unique module name: imported directly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


def layout(name: str) -> dict[str, list[int]]:
    """Reference tensor layout (name -> shape) of an upstream checkpoint."""
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-sounding test signal (harmonics with a moving pitch)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t) ** 2
    noise = 0.02 * rng.standard_normal(t.shape)
    return (0.3 * wave * envelope + noise).astype(np.float32)
