"""Offline media generation from upstream's input files, with ``vllm.LLM``.

    dynin-generate t2i MODEL t2i_metadata.jsonl OUT_DIR [--n-samples 1]
    dynin-generate i2i MODEL i2i_edits.json OUT_DIR --source-dir DIR
    dynin-generate tts MODEL texts.txt OUT_DIR [--voice alloy]

Inputs and outputs follow upstream's validation scripts:

- ``t2i``: one JSON object per line with a ``prompt`` (GenEval's
  ``metadata.jsonl``); writes ``OUT/<index:05>/samples/<j:05>.png`` and the
  line as ``OUT/<index:05>/metadata.jsonl`` (``validation/t2i_generate.py``);
- ``i2i``: a JSON object ``{key: {"id": source file, "prompt": ...}}`` whose
  sources lie under ``--source-dir``; writes ``OUT/<key>.png``
  (``validation/i2i_generate.py``);
- ``tts``: one text per line; writes ``OUT/<index:05>.wav`` (22,050 Hz).

Every request goes to the engine at once (it batches them, with vLLM's
progress bar); decoding and writing show a second one. Options left unset use
the task defaults (``README.md``); ``--max-model-len``,
``--gpu-memory-utilization`` and ``--enforce-eager`` go to the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _t2i_jobs(path: Path, n_samples: int) -> list[dict[str, Any]]:
    jobs = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        meta = json.loads(line)
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str):
            raise SystemExit(f"{path}:{index + 1}: expected an object with a prompt")
        for sample in range(n_samples):
            jobs.append({"index": index, "sample": sample, "meta": meta})
    return jobs


def _i2i_jobs(path: Path, source_dir: Path) -> list[dict[str, Any]]:
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, dict):
        raise SystemExit(f"{path}: expected an object of {{key: {{id, prompt}}}}")
    jobs = []
    for key, item in sorted(items.items(), key=lambda kv: _natural(kv[0])):
        source = source_dir / str(item.get("id", ""))
        if not source.is_file():
            raise SystemExit(f"{path}: entry {key!r}: missing source image {source}")
        jobs.append({"key": key, "prompt": item.get("prompt", ""), "source": source})
    return jobs


def _natural(key: str) -> tuple[int, Any]:
    return (0, int(key)) if key.isdigit() else (1, key)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dynin-generate``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("t2i", "i2i", "tts"))
    parser.add_argument("model", help="checkpoint directory or hub id")
    parser.add_argument("inputs", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source-dir", type=Path, help="i2i: the source images")
    parser.add_argument("--n-samples", type=int, default=1, help="t2i: per prompt")
    parser.add_argument(
        "--size", type=int, help="pixels (default: t2i 512, i2i 336, square)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="request i uses seed+i")
    parser.add_argument("--voice", default="alloy", help="tts: voice or EMOVA style")
    parser.add_argument("--max-new-tokens", type=int, default=383, help="tts")
    parser.add_argument("--max-model-len", type=int, help="vLLM engine argument")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, help="vLLM engine argument"
    )
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vLLM engine argument"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "i2i" and args.source_dir is None:
        parser.error("i2i needs --source-dir")
    return run(args, read_jobs(args))


def read_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The requests ``args.inputs`` asks for, checked."""
    if args.task == "t2i":
        jobs = _t2i_jobs(args.inputs, args.n_samples)
    elif args.task == "i2i":
        jobs = _i2i_jobs(args.inputs, args.source_dir)
    else:
        texts = args.inputs.read_text(encoding="utf-8").splitlines()
        jobs = [{"index": i, "text": t} for i, t in enumerate(texts) if t.strip()]
    if not jobs:
        raise SystemExit(f"{args.inputs}: nothing to generate")
    return jobs


def run(args: argparse.Namespace, jobs: list[dict[str, Any]], llm: Any = None) -> int:
    """Generate and write ``jobs`` (parsed from ``args.inputs``); with ``llm``
    (a ``vllm.LLM``), on that engine instead of a new one."""
    from tqdm import tqdm
    from transformers import AutoTokenizer
    from vllm import LLM

    from dynin_vllm.multimodal import generation, loading
    from dynin_vllm.serving.media_encoding import audio_bytes, image_bytes
    from dynin_vllm.serving.media_endpoints import Codecs, SpeechJob, voice_condition

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    codecs = Codecs(args.model)
    try:
        codecs.emova() if args.task == "tts" else codecs.magvit()
    except loading.CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from exc
    options = {
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
    }
    requests = []
    for i, job in enumerate(tqdm(jobs, desc="Preparing", disable=len(jobs) < 2)):
        seed = args.seed + i
        if args.task == "t2i":
            size = {"size": args.size} if args.size else {}
            request = generation.image_generation_request(
                tokenizer, job["meta"]["prompt"], seed=seed, **size, **options
            )
        elif args.task == "i2i":
            codes = codecs.encode_image(job["source"].read_bytes(), args.size or 336)
            request = generation.image_editing_request(
                tokenizer, job["prompt"], codes, seed=seed, **options
            )
        else:
            request = generation.speech_generation_request(
                tokenizer, job["text"], num_slots=args.max_new_tokens, seed=seed,
                **options,
            )  # fmt: skip
        requests.append(request)
    engine = {
        name: getattr(args, name)
        for name in ("max_model_len", "gpu_memory_utilization", "enforce_eager")
        if getattr(args, name)
    }
    if llm is None:
        llm = LLM(model=args.model, **engine)
    outputs = llm.generate(
        [r.prompt for r in requests], [r.sampling_params for r in requests]
    )
    condition = voice_condition(args.voice) if args.task == "tts" else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for i, (job, request, output) in enumerate(
        zip(tqdm(jobs, desc="Writing"), requests, outputs, strict=True)
    ):
        ids = list(output.outputs[0].token_ids)
        if args.task == "tts":
            units = generation.speech_units(ids, tokenizer)
            speech = SpeechJob(units, condition, 1.0, args.seed + i)
            ((wave, rate),) = codecs.synthesize([speech])
            path = args.out_dir / f"{job['index']:05}.wav"
            path.write_bytes(audio_bytes(wave, rate, "wav"))
            continue
        codes = generation.image_codes(request, ids, tokenizer)
        pixels = codecs.decode_images([codes], request.grid)[0]
        if args.task == "i2i":
            (args.out_dir / f"{job['key']}.png").write_bytes(image_bytes(pixels, "png"))
            continue
        folder = args.out_dir / f"{job['index']:05}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(job["meta"]))
        path = folder / "samples" / f"{job['sample']:05}.png"
        path.write_bytes(image_bytes(pixels, "png"))
    print(f"Wrote {len(jobs)} outputs to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
