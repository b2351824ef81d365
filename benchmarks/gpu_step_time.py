"""GPU step time: one denoising step against one autoregressive decode step.

    python benchmarks/gpu_step_time.py --out benchmarks/results/step_time_<card>.json
    python benchmarks/gpu_step_time.py --dry-run     # tiny shapes on CPU

Plain torch (plus this repo's Triton scoring kernel when it can run); vLLM is
not needed. Random weights of the real Dynin-Omni / LLaDA-8B shape (32 layers,
d 4096, 32 heads of 128, MLP 12288, vocabulary 138,752) in bf16 (16.2 GB).

For batch 1, 8 and 32 over a cached prefix of 512 tokens it times:

- **denoising step** with a window of W = 32 and 256 canvas tokens: the W tokens
  go through every layer attending bidirectionally to the cached prefix and
  to each other, the LM head runs on the window, and the rows are scored
  (chosen id and confidence);
- **AR decode step**: one token per sequence through every layer with a KV
  cache, LM head on that token, argmax.

Both are captured in CUDA graphs (launch overhead excluded, as in a served
engine). It reports the step-time ratio, the tokens/s each would give at 1, 2,
4 and 8 tokens committed per denoising step, and the weight-read floor (the
bytes of the weights at the measured device copy bandwidth).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

REAL = {"layers": 32, "d": 4096, "heads": 32, "ff": 12288, "vocab": 138752}
TINY = {"layers": 2, "d": 128, "heads": 4, "ff": 256, "vocab": 4099}


class RandomLLaDA:
    """The LLaDA block stack as plain tensors (weights only, no modules)."""

    def __init__(self, shape: dict, device: torch.device, dtype: torch.dtype):
        gen = torch.Generator(device="cpu").manual_seed(0)

        def weight(*size: int) -> torch.Tensor:
            t = torch.empty(size, dtype=dtype, device=device)
            return (
                t.normal_(0, 0.02, generator=None)
                if device.type == "cuda"
                else (torch.randn(size, generator=gen) * 0.02).to(dtype)
            )

        d, ff = shape["d"], shape["ff"]
        self.heads, self.head_dim = shape["heads"], d // shape["heads"]
        self.layers = [
            {
                "qkv": weight(3 * d, d),
                "o": weight(d, d),
                "gate_up": weight(2 * ff, d),
                "down": weight(d, ff),
                "n1": torch.ones(d, dtype=dtype, device=device),
                "n2": torch.ones(d, dtype=dtype, device=device),
            }
            for _ in range(shape["layers"])
        ]
        self.norm = torch.ones(d, dtype=dtype, device=device)
        self.head = weight(shape["vocab"], d)
        self.bytes = (
            sum(
                t.numel() * t.element_size()
                for layer in self.layers
                for t in layer.values()
            )
            + 2 * self.head.numel() * self.head.element_size()
        )

    @staticmethod
    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(
            x.dtype
        ) * w

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        """``x [B, T, d]`` attending to ``cache`` (per layer K, V ``[B, H, P, D]``)
        and bidirectionally to itself; returns the final hidden states."""
        b, t, d = x.shape
        for layer, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            h = self.rms(x, layer["n1"])
            q, k, v = (h @ layer["qkv"].T).split(d, dim=-1)
            q, k, v = (
                z.view(b, t, self.heads, self.head_dim).transpose(1, 2)
                for z in (q, k, v)
            )
            k = torch.cat([k_cache, k], dim=2)
            v = torch.cat([v_cache, v], dim=2)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=False)
            x = x + att.transpose(1, 2).reshape(b, t, d) @ layer["o"].T
            h = self.rms(x, layer["n2"])
            gate, up = (h @ layer["gate_up"].T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"].T
        return self.rms(x, self.norm)


def load_scorer(device: torch.device):
    """The Triton row scorer when it runs on ``device``, else the fp32 torch one."""

    def torch_score(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.logsumexp(logits.float(), dim=-1)
        best = logits.float().max(dim=-1)
        return best.indices, torch.exp(best.values - lse)

    try:
        from dynin_vllm.kernels import triton_ops

        def triton_score(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = logits.shape[0]
            zeros = torch.zeros(n, dtype=torch.int64, device=logits.device)
            return triton_ops.score_rows_triton(
                logits, torch.zeros(n, device=logits.device), zeros, zeros, zeros
            )

        triton_score(torch.randn(2, 1000, device=device))
        return "triton", triton_score
    except Exception as err:
        print(f"Triton scorer unavailable ({err}); timing the torch one", flush=True)
        return "torch-fp32", torch_score


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` (CUDA-graph replay on CUDA)."""
    if device.type == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            run = graph.replay
        except RuntimeError as err:  # something in fn is not capturable
            print(f"CUDA graph capture failed ({err}); timing eagerly", flush=True)
            torch.cuda.synchronize()
            run = fn
        times = []
        for _ in range(repeats):
            start, end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted once)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 10)
    return 2 * n / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes, any device"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--prefix", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    shape = TINY if args.dry_run else REAL
    if not cuda and not args.dry_run:
        raise SystemExit("No CUDA device: use --dry-run to check the script on CPU.")
    dtype = torch.bfloat16 if cuda else torch.float32
    batches = (1, 2) if args.dry_run else (1, 8, 32)
    windows = (8, 16) if args.dry_run else (32, 256)
    prefix = 16 if args.dry_run else args.prefix
    repeats = 3 if args.dry_run else args.repeats

    model = RandomLLaDA(shape, device, dtype)
    scorer_name, score = load_scorer(device)
    bandwidth = copy_bandwidth(device)
    floor = model.bytes / bandwidth
    rows = []
    d, heads = shape["d"], shape["heads"]
    for batch in batches:
        cache = [
            (
                torch.randn(
                    batch, heads, prefix, d // heads, dtype=dtype, device=device
                ),
                torch.randn(
                    batch, heads, prefix, d // heads, dtype=dtype, device=device
                ),
            )
            for _ in range(shape["layers"])
        ]
        token = torch.randn(batch, 1, d, dtype=dtype, device=device)

        def ar_step(token=token, cache=cache) -> None:
            hidden = model.forward(token, cache)
            (hidden[:, -1] @ model.head.T).argmax(-1)

        ar = timed(ar_step, device, repeats)
        for window in windows:
            canvas = torch.randn(batch, window, d, dtype=dtype, device=device)

            def denoise_step(canvas=canvas, cache=cache) -> None:
                hidden = model.forward(canvas, cache)
                logits = hidden.reshape(-1, d) @ model.head.T
                score(logits)

            step = timed(denoise_step, device, repeats)
            rows.append(
                {
                    "batch": batch,
                    "window": window,
                    "prefix": prefix,
                    "denoise_step_s": step,
                    "ar_step_s": ar,
                    "step_ratio": step / ar,
                    "weight_read_floor_s": floor,
                    "denoise_over_floor": step / floor,
                    "ar_over_floor": ar / floor,
                    "ar_tokens_per_s": batch / ar,
                    "projected_tokens_per_s": {
                        str(k): batch * k / step for k in (1, 2, 4, 8)
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del cache
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "shape": shape,
        "weight_bytes": model.bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "scorer": scorer_name,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
