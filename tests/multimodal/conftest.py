"""Shared fixtures: tiny codec checkpoints written once per session in the real
layout and loaded through the production loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynin_vllm.multimodal.emova import EmovaSpeechTokenizer, load_emova
from dynin_vllm.multimodal.image_tokenizer import ImageTokenizer
from dynin_vllm.testing.make_codec_checkpoint import (
    make_emova_checkpoint,
    make_magvit2_checkpoint,
)


@pytest.fixture(scope="session")
def magvit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_magvit2_checkpoint(tmp_path_factory.mktemp("magvit2"), seed=0)


@pytest.fixture(scope="session")
def emova_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_emova_checkpoint(tmp_path_factory.mktemp("emova"), seed=0)


@pytest.fixture(scope="session")
def image_tokenizer(magvit_dir: Path) -> ImageTokenizer:
    return ImageTokenizer.from_pretrained(magvit_dir, resolution=64)


@pytest.fixture(scope="session")
def emova(emova_dir: Path) -> EmovaSpeechTokenizer:
    return load_emova(emova_dir)
