"""dynin-vllm against autoregressive and HF-reference baselines, same shapes.

    python benchmarks/cpu_throughput.py            # ~10 minutes on 2 cores
    python benchmarks/cpu_throughput.py --quick    # a smoke run (~3 minutes)

Runs, in one invocation (these machines are noisy, so every ratio compares runs
of the same invocation):

- **dynin-vllm** in vLLM's engine: 1, 2 and 4 tokens per step (fixed
  schedules, independent of the weights) and Fast-dLLM's confidence threshold
  0.9, in the ``exact``, ``prefix``, ``dual`` and ``block`` modes;
- **AR baseline**: stock vLLM serving a ``LlamaForCausalLM`` with the same layer
  shapes and vocabulary, generating the same number of tokens;
- **HF-reference style**: full-sequence recompute every step at batch 1 with
  full-vocabulary logits for every position (what the previous vLLM-Omni
  integration did: an HF ``generate()`` loop), via ``dynin_vllm.reference``;

at batch sizes 1, 8 and 32, and reports output tokens/s, time to the first
committed block, time per committed block, forwards per output token and peak
worker memory. It then profiles one denoising batch (``profile_step.py``) and
runs vLLM's own ``vllm bench serve`` against ``vllm serve`` for both models
(``serve_bench.py``).
Results: ``benchmarks/results/cpu_throughput.json``, a plot next to it, and the
table in ``benchmarks/README.md`` (between the generated-table markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The engine settings (float32, max_model_len 512 = SIZES' max_sequence_length,
# eager), shared with the tests and serve_bench.py.
from dynin_vllm.testing.engine_args import ENGINE_ARGS

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

#: Model size for the CPU runs. With the real 138,752-id vocabulary the LM head
#: (35.5 M parameters) is most of the compute; the body (4 layers of width 256,
#: 3.2 M parameters) keeps attention and the KV path in play. A denoising step
#: of one request then costs ~10 ms of matrix work, far above the engine's
#: per-step Python overhead (~1 ms), so the numbers compare compute paths.
SIZES = {
    "d_model": 256,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 4,
    "mlp_hidden_size": 704,
    "max_sequence_length": 512,
}
#: A body-dominated model with the real vocabulary (``--model body``): 12
#: layers of width 512 (MLP 3x, as LLaDA-8B's) hold 41 M parameters under the
#: 71 M-parameter LM head. The head runs only on a step's masked block rows
#: (at most 16 per request) while the body runs on every forwarded token, so a
#: step's body work is 2-5x its head work (on the real 8B model, ~50x); the
#: default model's is 0.2-0.8x. Slower, so it runs a smaller grid.
BODY_SIZES = {
    "d_model": 512,
    "n_heads": 8,
    "n_kv_heads": 8,
    "n_layers": 12,
    "mlp_hidden_size": 1536,
    "max_sequence_length": 512,
}
PROMPT_LEN = 64
ANSWER_LEN = 64
BLOCK_LENGTH = 16
MODES = ("exact", "prefix", "dual", "block")
SETTINGS = {
    "1 tok/step": {"steps": ANSWER_LEN},
    "2 tok/step": {"steps": ANSWER_LEN // 2},
    "4 tok/step": {"steps": ANSWER_LEN // 4},
    "threshold 0.9": {"threshold": 0.9},
}
BATCHES = (1, 8, 32)
#: ``--model``: sizes, grid, results file and README marker of each model.
MODELS = {
    "head": {
        "sizes": SIZES,
        "batches": BATCHES,
        "settings": tuple(SETTINGS),
        "out": "cpu_throughput.json",
        "marker": "cpu-table",
    },
    "body": {
        "sizes": BODY_SIZES,
        "batches": (1, 8),
        "settings": ("2 tok/step", "4 tok/step"),
        "out": "cpu_throughput_body.json",
        "marker": "cpu-body-table",
    },
}


def count_parameters(sizes: dict, vocab: int) -> dict:
    d, ff, layers = sizes["d_model"], sizes["mlp_hidden_size"], sizes["n_layers"]
    body = layers * (4 * d * d + 3 * d * ff + 2 * d) + d
    return {"body": body, "embedding": vocab * d, "lm_head": vocab * d}


def build_checkpoints(
    cache: Path, sizes: dict = SIZES, tag: str = "bench", vocab: int | None = None
) -> tuple[Path, Path]:
    """The Dynin checkpoint (project tool) and a Llama one with the same shapes
    (``vocab``: a small vocabulary instead of the real one; a LLaDA checkpoint
    then, as Dynin-Omni's media offsets need the real one)."""
    from dynin_vllm.testing.make_checkpoint import make_checkpoint

    dynin = cache / f"dynin-{tag}"
    if not (dynin / "model.safetensors.index.json").exists():
        preset = "dynin" if vocab is None else "llada"
        make_checkpoint(dynin, preset, seed=0, vocab_size=vocab, **sizes)
    llama = cache / f"llama-{tag}"
    if not (llama / "config.json").exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from dynin_vllm.testing.tokenizer import save_tokenizer

        config = LlamaConfig(
            hidden_size=sizes["d_model"],
            intermediate_size=sizes["mlp_hidden_size"],
            num_hidden_layers=sizes["n_layers"],
            num_attention_heads=sizes["n_heads"],
            num_key_value_heads=sizes["n_kv_heads"],
            vocab_size=vocab or 138752,
            max_position_embeddings=sizes["max_sequence_length"],
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=126080 if vocab is None else vocab - 3,
            eos_token_id=126081 if vocab is None else vocab - 2,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(llama, safe_serialization=True)
        save_tokenizer(llama, 126464)
    return dynin, llama


def prompts(batch: int) -> list[dict]:
    import random

    rng = random.Random(batch)
    return [
        {
            "prompt_token_ids": [126080]
            + [rng.randrange(200, 60000) for _ in range(PROMPT_LEN - 1)]
        }
        for _ in range(batch)
    ]


def worker_peak_rss_mb() -> float:
    """Peak resident memory of this process's vLLM children (VmHWM)."""
    import psutil

    peak = 0
    for child in psutil.Process().children(recursive=True):
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def run_batch(llm, batch: int, params, block: int | None) -> dict:
    """Generate for ``batch`` prompts; timings from vLLM's request stats."""
    requests = prompts(batch)
    start = time.perf_counter()
    outputs = llm.generate(requests, [params] * batch, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    first, per_block, steps = [], [], []
    for out in outputs:
        stats = out.metrics
        if stats is not None and stats.first_token_latency:
            first.append(stats.first_token_latency)
            n = len(out.outputs[0].token_ids)
            blocks = -(-n // block) if block else n
            if blocks > 1:
                per_block.append(
                    (stats.last_token_ts - stats.first_token_ts) / (blocks - 1)
                )
        metrics = out.outputs[0].spec_decode_metrics
        if metrics is not None:
            steps.append(metrics.to_dict()["num_spec_steps"])
    return {
        "batch": batch,
        "seconds": elapsed,
        "output_tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "time_to_first_block_s": sum(first) / len(first) if first else None,
        "time_per_block_s": sum(per_block) / len(per_block) if per_block else None,
        "denoising_steps_per_request": sum(steps) / len(steps) if steps else None,
        "peak_worker_rss_mb": worker_peak_rss_mb(),
    }


def forwards_per_token(result: dict, mode: str | None) -> float | None:
    """Engine forwards per output token of one request.

    A request's forwards are its denoising steps, in every mode: its first
    forward carries the prompt and the first canvas, and the block-start
    refresh of ``prefix`` and ``dual`` is the block's first step
    (``tests/test_engine_forwards.py`` counts the engine iterations of a lone
    request). For AR, one forward per token plus the prefill.
    """
    tokens = result["output_tokens"] / result["batch"]
    if mode is None:
        return (tokens + 1) / tokens
    steps = result["denoising_steps_per_request"] or 0
    return steps / tokens


def bench_dynin(path: Path, batches, settings) -> list[dict]:
    from tqdm import tqdm
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=str(path), disable_log_stats=False, **ENGINE_ARGS)
    start_s = time.perf_counter() - t0
    rows = []
    grid = [(m, s, b) for m in MODES for s in settings for b in batches]
    llm.generate(
        prompts(1), SamplingParams(max_tokens=8, temperature=0), use_tqdm=False
    )
    for mode, setting, batch in tqdm(grid, desc="dynin-vllm", unit="run"):
        params = SamplingParams(
            max_tokens=ANSWER_LEN,
            temperature=0,
            ignore_eos=True,
            extra_args={
                "mode": mode,
                "block_length": BLOCK_LENGTH,
                **SETTINGS[setting],
            },
        )
        result = run_batch(llm, batch, params, BLOCK_LENGTH)
        result.update(system="dynin-vllm", mode=mode, setting=setting)
        result["forwards_per_token"] = forwards_per_token(result, mode)
        rows.append(result)
    _shutdown(llm)
    return [{"system": "dynin-vllm", "engine_start_s": start_s}, *rows]


def bench_ar(path: Path, batches) -> list[dict]:
    from tqdm import tqdm
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=str(path), disable_log_stats=False, **ENGINE_ARGS)
    start_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=ANSWER_LEN, temperature=0, ignore_eos=True)
    llm.generate(prompts(1), params, use_tqdm=False)
    rows = []
    for batch in tqdm(batches, desc="AR baseline", unit="run"):
        result = run_batch(llm, batch, params, None)
        result.update(system="AR", mode=None, setting="1 tok/forward")
        result["forwards_per_token"] = forwards_per_token(result, None)
        rows.append(result)
    _shutdown(llm)
    return [{"system": "AR", "engine_start_s": start_s}, *rows]


def bench_hf_reference(path: Path, settings) -> list[dict]:
    """Batch 1, full recompute and full-vocabulary logits every step."""
    import torch
    from tqdm import tqdm

    from dynin_vllm.reference.model import ReferenceLLaDA
    from dynin_vllm.reference.sampler import generate

    torch.set_num_threads(os.cpu_count() or 1)
    model = ReferenceLLaDA.from_pretrained(path)
    prompt = prompts(1)[0]["prompt_token_ids"]
    rows = []
    for setting in tqdm(settings, desc="HF-reference", unit="run"):
        start = time.perf_counter()
        out = generate(
            model,
            prompt,
            gen_length=ANSWER_LEN,
            block_length=BLOCK_LENGTH,
            mode="exact",
            **SETTINGS[setting],
        )
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "system": "HF-reference",
                "mode": "exact",
                "setting": setting,
                "batch": 1,
                "seconds": elapsed,
                "output_tokens": ANSWER_LEN,
                "tokens_per_s": ANSWER_LEN / elapsed,
                "forwards_per_token": out.nfe / ANSWER_LEN,
                "denoising_steps_per_request": out.nfe,
            }
        )
    return rows


def _shutdown(llm) -> None:
    """Stop an engine's processes before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    time.sleep(2)


def ratios(rows: list[dict]) -> dict:
    def tps(system, mode, setting, batch):
        for r in rows:
            if (r.get("system"), r.get("mode"), r.get("setting"), r.get("batch")) == (
                system,
                mode,
                setting,
                batch,
            ):
                return r["tokens_per_s"]
        return None

    out = {}
    for batch in BATCHES:
        ar = tps("AR", None, "1 tok/forward", batch)
        for mode in MODES:
            for setting in SETTINGS:
                ours = tps("dynin-vllm", mode, setting, batch)
                if ours and ar:
                    out[f"dynin/AR {mode} {setting} b{batch}"] = ours / ar
                hf = tps("HF-reference", "exact", setting, 1)
                if ours and hf:
                    out[f"dynin/HF {mode} {setting} b{batch}"] = ours / hf
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODES), figsize=(5 * len(MODES), 4), sharey=True)
    ar = [r for r in rows if r.get("system") == "AR" and "tokens_per_s" in r]
    hf = {
        r["setting"]: r["tokens_per_s"]
        for r in rows
        if r.get("system") == "HF-reference"
    }
    for ax, mode in zip(axes, MODES, strict=True):
        for setting in SETTINGS:
            pts = [
                (r["batch"], r["tokens_per_s"])
                for r in rows
                if r.get("system") == "dynin-vllm"
                and r.get("mode") == mode
                and r.get("setting") == setting
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"dynin {setting}")
        if ar:
            ax.plot(
                [r["batch"] for r in ar],
                [r["tokens_per_s"] for r in ar],
                "k--",
                marker="s",
                label="AR (stock vLLM)",
            )
        if "1 tok/step" in hf:
            ax.axhline(
                hf["1 tok/step"],
                color="grey",
                linestyle=":",
                label="HF-reference 1 tok/step, b1",
            )
        ax.set_title(f"mode={mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("output tokens / s")
    axes[-1].legend(fontsize=7)
    fig.suptitle("CPU throughput, same layer shapes and vocabulary")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict], machine: str, command: str) -> str:
    lines = [
        f"Machine: {machine}. Prompt {PROMPT_LEN} tokens, answer {ANSWER_LEN}, block "
        f"{BLOCK_LENGTH}; greedy. Generated by `{command}`.",
        "",
        "| system | mode | setting | batch | tok/s | first block (s) | per block (s) "
        "| forwards/token | peak worker RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v, spec=".3g"):
        return "" if v is None else format(v, spec)

    for r in rows:
        if "tokens_per_s" not in r:
            continue
        cells = [
            r["system"],
            r.get("mode") or "",
            r["setting"],
            str(r["batch"]),
            fmt(r["tokens_per_s"], ".1f"),
            fmt(r.get("time_to_first_block_s")),
            fmt(r.get("time_per_block_s")),
            fmt(r.get("forwards_per_token")),
            fmt(r.get("peak_worker_rss_mb"), ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def serving_table(serving: dict) -> str:
    """vLLM's own serving benchmark, as a small table."""
    lines = [
        f"Serving, measured by `{serving['tool']}` against `vllm serve` on loopback; "
        f"dynin-vllm with `--extra-body '{json.dumps(serving['dynin_settings'])}'`:",
        "",
        "| server | output tok/s | requests/s | mean TTFT (ms) | mean TPOT (ms) |",
        "|---|---|---|---|---|",
    ]
    for name in ("dynin-vllm", "AR"):
        r = serving[name]
        lines.append(
            f"| {name} | {r['output_throughput']:.1f} | {r['request_throughput']:.2f}"
            f" | {r['mean_ttft_ms']:.0f} | {r['mean_tpot_ms']:.1f} |"
        )
    return "\n".join(lines)


def headline(result: dict) -> str:
    """The top-level README's summary: ratios at batch 1 and 32."""
    r = result["ratios"]
    lines = [
        f"CPU ({result['machine']}), width-{result['sizes']['d_model']} model with "
        "the real vocabulary, greedy; from `benchmarks/results/cpu_throughput.json`"
        " (`python benchmarks/cpu_throughput.py`):",
        "",
        "| dynin-vllm setting | vs AR, batch 1 | vs AR, batch 32 | vs HF-reference, "
        "batch 1 | vs HF-reference, batch 32 |",
        "|---|---|---|---|---|",
    ]
    for mode in ("prefix", "dual", "block", "exact"):
        for setting in ("1 tok/step", "4 tok/step", "threshold 0.9"):
            cells = [
                r.get(f"dynin/{base} {mode} {setting} b{b}")
                for base, b in (("AR", 1), ("AR", 32), ("HF", 1), ("HF", 32))
            ]
            if None in cells:
                continue
            lines.append(
                f"| `{mode}`, {setting} | "
                + " | ".join(f"{c:.2f}x" for c in cells)
                + " |"
            )
    return "\n".join(lines)


def write_between(readme: Path, marker: str, text: str) -> None:
    """Replace the text between ``<!-- marker:begin/end -->`` in ``readme``."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    content = readme.read_text()
    head, found, rest = content.partition(begin)
    if not found:
        raise ValueError(f"{readme} has no {begin} marker")
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache")
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="head",
        help="head: the LM head dominates (default); body: the layers do",
    )
    parser.add_argument("--out", type=Path, help="results JSON (default per model)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--no-serve", action="store_true", help="skip the vllm bench serve runs"
    )
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument(
        "--from-json", action="store_true", help="only redraw plot and tables"
    )
    args = parser.parse_args(argv)
    model = MODELS[args.model]
    out = args.out or RESULTS / model["out"]
    if args.from_json:
        publish(json.loads(out.read_text()), out, readme=True)
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    sizes = model["sizes"]
    dynin, llama = build_checkpoints(args.cache, sizes, tag=f"bench-{args.model}")
    batches, settings = model["batches"], model["settings"]
    if args.quick:
        batches = batches[:2]
        settings = [s for s in settings if s in ("1 tok/step", "4 tok/step")]
    rows = bench_ar(llama, batches)
    rows += bench_dynin(dynin, batches, settings)
    rows += bench_hf_reference(dynin, settings)
    profile = None
    if not args.no_profile and args.model == "head":
        proc = subprocess.run(
            [sys.executable, str(ROOT / "profile_step.py"), str(dynin)],
            capture_output=True,
            text=True,
            check=True,
        )
        profile = json.loads(proc.stdout.strip().splitlines()[-1])
    serving = None
    if not args.no_serve and args.model == "head":
        proc = subprocess.run(
            [sys.executable, str(ROOT / "serve_bench.py"), str(dynin), str(llama)],
            capture_output=True,
            text=True,
            check=True,
        )
        serving = json.loads(proc.stdout.strip().splitlines()[-1])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    result = {
        "machine": machine,
        "model": args.model,
        "sizes": sizes,
        "parameters": count_parameters(sizes, 138752),
        "prompt_len": PROMPT_LEN,
        "answer_len": ANSWER_LEN,
        "block_length": BLOCK_LENGTH,
        "rows": rows,
        "ratios": ratios(rows),
        "profile": profile,
        "serving": serving,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    publish(result, out, readme=not args.no_readme and not args.quick)


def publish(result: dict, out: Path, readme: bool) -> None:
    """Plot beside the JSON; tables into the READMEs."""
    name = result.get("model", "head")
    plot(result["rows"], out.with_suffix(".png"))
    command = "python benchmarks/cpu_throughput.py" + (
        f" --model {name}" if name != "head" else ""
    )
    text = table(result["rows"], result["machine"], command)
    if result.get("serving"):
        text += "\n\n" + serving_table(result["serving"])
    if readme:
        write_between(ROOT / "README.md", MODELS[name]["marker"], text)
        if name == "head":
            write_between(ROOT.parent / "README.md", "headline", headline(result))
    print(text)
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
