"""The README's main job and offline example, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.engine_utils import free_port

pytestmark = pytest.mark.server


def test_serve_demo_prints_requests_and_answers_one(dynin_checkpoint):
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynin_vllm.demo.serve",
            str(dynin_checkpoint),
            "--port",
            str(port),
            "--once",
            "--",
            "--enforce-eager",
            "--max-model-len",
            "512",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"curl -s http://127.0.0.1:{port}/v1/completions" in out
    assert f"curl -s http://127.0.0.1:{port}/v1/chat/completions" in out
    assert "Example completion: '" in out
    assert '"type": "image_url"' in out
    assert "Example image chat: '" in out
    # The audio examples: a generated sample clip, in chat and transcribed.
    clip = dynin_checkpoint.parent / "sample_speech.wav"
    assert (
        f"/v1/audio/transcriptions -F model={dynin_checkpoint} -F file=@{clip}" in out
    )
    assert "Example audio chat: '" in out
    assert "Example transcription: '" in out
    # Image generation, editing and speech synthesis, advertised and saved.
    assert f"curl -s http://127.0.0.1:{port}/v1/images/generations" in out
    assert f"curl -s http://127.0.0.1:{port}/v1/images/edits" in out
    assert f"curl -s http://127.0.0.1:{port}/v1/audio/speech" in out
    image = dynin_checkpoint.parent / "generated_image.png"
    edited = dynin_checkpoint.parent / "edited_image.png"
    speech = dynin_checkpoint.parent / "generated_speech.wav"
    assert f"Example image generation: saved {image}" in out
    assert f"Example image edit: saved {edited}" in out
    assert f"Example speech synthesis: saved {speech}" in out
    from PIL import Image

    assert Image.open(image).size == (256, 256)
    assert Image.open(edited).size == (128, 128)
    import soundfile as sf

    assert sf.info(str(speech)).samplerate == 22050


def test_offline_example_reports_steps(dynin_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "dynin_vllm.demo.offline", str(dynin_checkpoint)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if " tokens in " in line]
    assert len(lines) == 4  # two conversations x two settings
    assert all(line.endswith("steps") for line in lines)
    (filled,) = [
        line for line in result.stdout.splitlines() if "filled prompt:" in line
    ]
    assert "The capital of France is" in filled and "<|mdm_mask|>" not in filled


def test_tiny_checkpoint_is_built_once(tmp_path):
    from dynin_vllm.demo.serve import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint(tmp_path / "tiny")
    stamp = (path / "config.json").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(path) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
