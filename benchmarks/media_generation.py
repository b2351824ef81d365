"""Media generation throughput: the engine against upstream's loop style.

    python -m benchmarks.media_generation DYNIN_CHECKPOINT [--out FILE.json]
        [--plot FILE.png] [--size 256] [--speech-slots 383]

In one run, on this machine, with the embedded tiny checkpoint (float32):

- **text to image**: images per minute at batch 1, 4 and 8 (``size`` px, 20
  MaskGIT steps, guidance 3.5, temperature 1 with seeds), through
  ``LLM.generate``;
- **text to speech**: seconds of speech per wall-clock second at batch 1, 4
  and 8 (upstream's 383 slots, blocks of 128, one step per slot, guidance 2.5;
  one unit is 40 ms);
- **upstream's loop style** for both, in the same run: one request at a time,
  the whole padded sequence recomputed every step with full-vocabulary logits
  (``dynin_vllm.reference.media_generation``, which is written that way);
- the ratio engine / upstream style at each batch size;
- **LM-head time** at the real shape (hidden 4,096, 138,752 ids; random
  float32 weights), milliseconds per 64 rows: every column, against the
  columns image rows need (the 8,192 codes) and speech rows need (the hull of
  the units, ``<|eoa|>`` and EOS: 12,671), which is what the engine computes
  for a step whose rows are all image or all speech rows.

Only generation is timed; decoding the codes and units is not. The default
size is 256 px (256 image slots) to keep the upstream-style loop, which
computes full-vocabulary logits for every position of both CFG rows, within
a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.reporting import emit, machine

BATCHES = (1, 4, 8)
T2I_STEPS, T2I_GUIDANCE = 20, 3.5
TTS_BLOCK, TTS_GUIDANCE = 128, 2.5
UNIT_SECONDS = 0.04
PROMPTS = [
    "a red cube on a blue sphere",
    "a cat sitting on a wooden chair",
    "a lighthouse at sunset",
    "two apples on a plate",
    "a snowy mountain village",
    "a bowl of ramen",
    "an old sailing ship",
    "a field of sunflowers",
]


def _engine_rates(llm, tokenizer, size: int, slots: int) -> dict:
    from dynin_vllm.multimodal.generation import (
        image_generation_request,
        speech_generation_request,
    )

    def run(requests) -> float:
        start = time.perf_counter()
        llm.generate(
            [r.prompt for r in requests],
            [r.sampling_params for r in requests],
            use_tqdm=False,
        )
        return time.perf_counter() - start

    run([image_generation_request(tokenizer, "warm-up", size=64, steps=2)])
    images, speech = {}, {}
    for batch in BATCHES:
        requests = [
            image_generation_request(
                tokenizer, PROMPTS[i], size=size, steps=T2I_STEPS, seed=i
            )
            for i in range(batch)
        ]
        images[batch] = 60.0 * batch / run(requests)
        requests = [
            speech_generation_request(
                tokenizer, PROMPTS[i], num_slots=slots, block_length=TTS_BLOCK, seed=i
            )
            for i in range(batch)
        ]
        speech[batch] = batch * slots * UNIT_SECONDS / run(requests)
    return {"images_per_minute": images, "speech_seconds_per_second": speech}


def _upstream_rates(model, tokenizer, size: int, slots: int) -> dict:
    from dynin_vllm.reference import prompts
    from dynin_vllm.reference.media_generation import (
        maskgit_generate,
        speech_generate,
    )

    grid = (size // 16) ** 2
    ids, mask = prompts.t2i_prompt(tokenizer, PROMPTS[0], grid)
    uncond, uncond_mask = prompts.t2i_prompt(tokenizer, "", grid)
    start = time.perf_counter()
    maskgit_generate(
        model,
        ids,
        mask,
        num_slots=grid,
        codebook_start=len(tokenizer),
        steps=T2I_STEPS,
        guidance_scale=T2I_GUIDANCE,
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    image_seconds = time.perf_counter() - start
    ids, mask = prompts.t2s_prompt(
        tokenizer, PROMPTS[0], "Generate speech for the given text.", slots
    )
    start = time.perf_counter()
    speech_generate(
        model,
        ids,
        mask,
        speech_start=len(tokenizer) + prompts.IMAGE_CODEBOOK,
        steps=slots,
        block_length=TTS_BLOCK,
        cfg_scale=TTS_GUIDANCE,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    speech_seconds = time.perf_counter() - start
    # One request at a time: the rate is the same at every batch size.
    return {
        "images_per_minute": {b: 60.0 / image_seconds for b in BATCHES},
        "speech_seconds_per_second": {
            b: slots * UNIT_SECONDS / speech_seconds for b in BATCHES
        },
    }


def _lm_head_ms(rows: int = 64, hidden: int = 4096, vocab: int = 138752) -> dict:
    """Milliseconds per ``rows`` rows of the LM head: all columns and windows."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, hidden, generator=gen) * 0.02
    states = torch.randn(rows, hidden, generator=gen)
    windows = {
        "full": (0, vocab),
        "image_codes": (126464, 126464 + 8192),
        "speech_units": (126081, vocab),
    }
    result = {}
    for name, (lo, hi) in windows.items():
        head = weight[lo:hi]
        torch.nn.functional.linear(states, head)  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            torch.nn.functional.linear(states, head)
            times.append(time.perf_counter() - start)
        result[name] = {"columns": hi - lo, "ms": 1000 * min(times)}
    for name in ("image_codes", "speech_units"):
        result[name]["speedup"] = result["full"]["ms"] / result[name]["ms"]
    return result


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in (
        (axes[0], "images_per_minute", "images / minute"),
        (axes[1], "speech_seconds_per_second", "speech s / wall s"),
    ):
        for source, style in (("engine", "o-"), ("upstream_loop", "s--")):
            values = report[source][key]
            ax.plot(BATCHES, [values[b] for b in BATCHES], style, label=source)
        ax.set_xlabel("requests in flight")
        ax.set_ylabel(label)
        ax.set_xticks(BATCHES)
        ax.legend()
    fig.suptitle(f"Tiny Dynin-Omni on {os.cpu_count()} CPU cores (float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--speech-slots", type=int, default=383)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer
    from vllm import LLM

    from dynin_vllm.reference.model import ReferenceLLaDA

    tokenizer = AutoTokenizer.from_pretrained(str(args.checkpoint))
    model = ReferenceLLaDA.from_pretrained(args.checkpoint)
    lm_head = _lm_head_ms()
    upstream = _upstream_rates(model, tokenizer, args.size, args.speech_slots)
    llm = LLM(
        model=str(args.checkpoint),
        max_model_len=2048,
        enforce_eager=True,
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_num_seqs=2 * max(BATCHES),
    )
    engine = _engine_rates(llm, tokenizer, args.size, args.speech_slots)
    report = {
        "benchmark": "media_generation",
        "machine": machine(),
        "settings": {
            "size": args.size,
            "t2i_steps": T2I_STEPS,
            "t2i_guidance": T2I_GUIDANCE,
            "speech_slots": args.speech_slots,
            "speech_block": TTS_BLOCK,
            "speech_guidance": TTS_GUIDANCE,
            "temperature": 1.0,
        },
        "engine": engine,
        "upstream_loop": upstream,
        "lm_head_per_64_rows": lm_head,
        "engine_over_upstream": {
            key: {b: engine[key][b] / upstream[key][b] for b in BATCHES}
            for key in engine
        },
    }
    emit(report, args.out)
    if args.plot:
        _plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
