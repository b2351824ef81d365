"""Image understanding: encoder cost, codec memory, and time to first block.

    python -m benchmarks.media_understanding DYNIN_CHECKPOINT [--out FILE.json]

In one run, on this machine:

- **MAGVIT-v2 encoder**, milliseconds per 336 px image at batch 1 and 8, for
  the real network (``snu-aidas/magvitv2`` shapes, random weights) and the
  embedded tiny one, float32 on CPU; and each codec's parameter memory;
- **time to first block** of an image chat request (336 px: 441 codes)
  against a text request with the same number of prompt tokens, on the
  embedded tiny checkpoint (one block of 16 tokens, 4 per step; median of 5):
  the difference is the image's preprocessing and encoding.
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
        }
    return report


def first_block(checkpoint: str) -> dict:
    from vllm import LLM, SamplingParams

    from dynin_vllm.reference.prompts import chat_turn
    from dynin_vllm.testing.engine_args import ENGINE_ARGS

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

    prompt_len = len(
        llm.generate([image_request(0)], params, use_tqdm=False)[0].prompt_token_ids
    )
    text = {
        "prompt_token_ids": [126080, *rng.integers(10, 120000, prompt_len - 1).tolist()]
    }
    llm.generate([text], params, use_tqdm=False)  # warm-up

    def timed(request: dict) -> float:
        start = time.perf_counter()
        llm.generate([request], params, use_tqdm=False)
        return 1000 * (time.perf_counter() - start)

    image_ms = [timed(image_request(i + 1)) for i in range(REPEATS)]
    text_ms = [timed(text) for _ in range(REPEATS)]
    return {
        "prompt_tokens": prompt_len,
        "image_request_ms_median": statistics.median(image_ms),
        "text_request_ms_median": statistics.median(text_ms),
        "image_over_text": statistics.median(image_ms) / statistics.median(text_ms),
        "image_request_ms": image_ms,
        "text_request_ms": text_ms,
    }


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
        "time_to_first_block": first_block(args.dynin),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
