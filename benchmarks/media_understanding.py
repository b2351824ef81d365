"""Media understanding: encoder cost, codec memory, and time to first block.

    python -m benchmarks.media_understanding DYNIN_CHECKPOINT [--out FILE.json]

In one run, on this machine:

- **MAGVIT-v2 encoder**, milliseconds per 336 px image at batch 1 and 8 and
  per video (5 frames at 224 px), for the real network
  (``snu-aidas/magvitv2`` shapes, random weights) and the embedded tiny one,
  float32 on CPU; and each codec's parameter memory;
- **EMOVA S2U encoder** (what the front end runs for audio), milliseconds per
  second of audio on a 10 s clip, real shapes and tiny, and its memory;
- **time to first block** of an image chat request (336 px: 441 codes) and of
  a speech request (10 s of audio), each against a text request with the same
  number of prompt tokens, on the embedded tiny checkpoint (one block of 16
  tokens, 4 per step; median of 5): the difference is the media's
  preprocessing and encoding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.reporting import emit, machine

RESOLUTION = 336
VIDEO_FRAMES, VIDEO_RESOLUTION = 5, 224
AUDIO_SECONDS = 10.0
REPEATS = 5


def _encoder_ms(magvit, batch: int) -> float:
    pixels = torch.rand(batch, 3, RESOLUTION, RESOLUTION) * 2 - 1
    magvit.encode(pixels)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        magvit.encode(pixels)
        times.append(time.perf_counter() - start)
    return 1000 * min(times) / batch


def _best_ms(run, repeats: int = 3) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def _video_ms(magvit) -> float:
    frames = torch.rand(VIDEO_FRAMES, 3, VIDEO_RESOLUTION, VIDEO_RESOLUTION) * 2 - 1
    return _best_ms(lambda: magvit.encode(frames))


def _megabytes(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def encoders(checkpoint: str) -> dict:
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.multimodal.magvit2 import MagvitV2

    report = {}
    for name, magvit in (
        ("real_shape_random_weights", MagvitV2().eval()),
        ("tiny", load_magvit2(Path(checkpoint) / "magvitv2")),
    ):
        report[name] = {
            "parameters_mib_fp32": _megabytes(magvit),
            "ms_per_image_batch_1": _encoder_ms(magvit, 1),
            "ms_per_image_batch_8": _encoder_ms(magvit, 8),
            "ms_per_video_5x224": _video_ms(magvit),
        }
    return report


def speech_encoders(checkpoint: str) -> dict:
    from dynin_vllm.multimodal.emova_s2u import S2UModel
    from dynin_vllm.multimodal.speech_units import SpeechUnitEncoder
    from dynin_vllm.testing.media_samples import speech_like

    clip = speech_like(1, seconds=AUDIO_SECONDS)
    report = {}
    for name, encoder in (
        ("real_shape_random_weights", SpeechUnitEncoder(S2UModel())),
        ("tiny", SpeechUnitEncoder.load(Path(checkpoint) / "emova_speech_tokenizer")),
    ):
        units = encoder.units(clip)
        report[name] = {
            "parameters_mib_fp32": _megabytes(encoder.s2u),
            "ms_per_second_of_audio": _best_ms(lambda e=encoder: e.units(clip))
            / AUDIO_SECONDS,
            "units_per_second_of_audio": len(units) / AUDIO_SECONDS,
        }
    return report


def first_block(checkpoint: str) -> dict:
    from vllm import LLM, SamplingParams

    from dynin_vllm.reference.prompts import chat_turn
    from dynin_vllm.testing.engine_args import ENGINE_ARGS
    from dynin_vllm.testing.media_samples import speech_like

    llm = LLM(model=checkpoint, **ENGINE_ARGS)
    params = SamplingParams(
        max_tokens=16,
        temperature=0,
        ignore_eos=True,
        extra_args={"block_length": 16, "steps": 4},
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (RESOLUTION, 400, 3), dtype=np.uint8))
        for _ in range(REPEATS + 1)
    ]

    def image_request(i: int) -> dict:
        return {
            "prompt": chat_turn("What is this?"),
            "multi_modal_data": {"image": images[i]},
        }

    def speech_request(i: int) -> dict:
        # A different clip each time: vLLM's processor cache would reuse units.
        clip = speech_like(10 + i, seconds=AUDIO_SECONDS)
        return {
            "prompt": chat_turn("Transcribe the given audio."),
            "multi_modal_data": {"audio": (clip, 16000)},
        }

    def timed(request: dict) -> float:
        start = time.perf_counter()
        llm.generate([request], params, use_tqdm=False)
        return 1000 * (time.perf_counter() - start)

    report = {}
    for task, make_request in (("image", image_request), ("audio", speech_request)):
        first = llm.generate([make_request(0)], params, use_tqdm=False)[0]
        prompt_len = len(first.prompt_token_ids)
        ids = rng.integers(10, 120000, prompt_len - 1).tolist()
        text = {"prompt_token_ids": [126080, *ids]}
        llm.generate([text], params, use_tqdm=False)  # warm-up
        media_ms = [timed(make_request(i + 1)) for i in range(REPEATS)]
        text_ms = [timed(text) for _ in range(REPEATS)]
        report[task] = {
            "prompt_tokens": prompt_len,
            f"{task}_request_ms_median": statistics.median(media_ms),
            "text_request_ms_median": statistics.median(text_ms),
            f"{task}_over_text": statistics.median(media_ms)
            / statistics.median(text_ms),
            f"{task}_request_ms": media_ms,
            "text_request_ms": text_ms,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dynin")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    torch.set_num_threads(os.cpu_count() or 1)
    report = {
        "machine": machine(),
        "resolution": RESOLUTION,
        "magvit2_encoder": encoders(args.dynin),
        "s2u_encoder": speech_encoders(args.dynin),
        "time_to_first_block": first_block(args.dynin),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
