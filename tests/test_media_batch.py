"""The offline media CLI (``dynin-generate``) reads upstream's input files and
writes images and audio where upstream's scripts write them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.engine


#: The CPU test engine settings (a small KV cache beside the suite's engines).
ENGINE = ("--gpu-memory-utilization", "0.15", "--enforce-eager")


def _cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dynin_vllm.demo.media_batch", *args, *ENGINE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_text_to_image_writes_geneval_folders(dynin_checkpoint, tmp_path):
    metadata = tmp_path / "t2i_metadata.jsonl"
    lines = [{"prompt": "a red cube", "tag": "single"}, {"prompt": "two cats"}]
    metadata.write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    out = tmp_path / "images"
    result = _cli(
        "t2i", str(dynin_checkpoint), str(metadata), str(out),
        "--size", "64", "--steps", "2", "--n-samples", "2", "--max-model-len", "512",
    )  # fmt: skip
    for index, meta in enumerate(lines):
        folder = out / f"{index:05}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        samples = sorted((folder / "samples").iterdir())
        assert [p.name for p in samples] == ["00000.png", "00001.png"]
        assert all(Image.open(p).size == (64, 64) for p in samples)
    # Each request has its own seed (seed + i): the two samples differ.
    first, second = (
        np.asarray(Image.open(p)) for p in sorted((out / "00000" / "samples").iterdir())
    )
    assert not np.array_equal(first, second)
    assert "Writing" in result.stderr  # the progress bar


def test_image_edits_and_speech(dynin_checkpoint, dynin_llm, tmp_path):
    """The i2i and tts inputs, run on the shared engine (in process)."""
    from dynin_vllm.demo.media_batch import build_parser, read_jobs, run

    def generate(*argv: str) -> None:
        args = build_parser().parse_args(argv)
        assert run(args, read_jobs(args), llm=dynin_llm) == 0

    sources = tmp_path / "sources"
    sources.mkdir()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(sources / "cat.png")
    edits = tmp_path / "i2i_edits.json"
    edits.write_text(json.dumps({"7": {"id": "cat.png", "prompt": "make it red"}}))
    generate(
        "i2i", str(dynin_checkpoint), str(edits), str(tmp_path / "edited"),
        "--source-dir", str(sources), "--steps", "2", "--size", "64",
    )  # fmt: skip
    assert Image.open(tmp_path / "edited" / "7.png").size == (64, 64)
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there.\n\nGood morning.\n")
    generate(
        "tts", str(dynin_checkpoint), str(texts), str(tmp_path / "speech"),
        "--max-new-tokens", "12",
    )  # fmt: skip
    import soundfile as sf

    written = sorted(p.name for p in (tmp_path / "speech").iterdir())
    assert written == ["00000.wav", "00002.wav"]
    assert sf.info(str(tmp_path / "speech" / "00000.wav")).samplerate == 22050


def test_missing_source_is_named(dynin_checkpoint, tmp_path):
    edits = tmp_path / "i2i_edits.json"
    edits.write_text(json.dumps({"1": {"id": "nope.png", "prompt": "x"}}))
    result = subprocess.run(
        [
            sys.executable, "-m", "dynin_vllm.demo.media_batch", "i2i",
            str(dynin_checkpoint), str(edits), str(tmp_path / "o"),
            "--source-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "nope.png" in result.stderr
