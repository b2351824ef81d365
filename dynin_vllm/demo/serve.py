"""Serve a checkpoint with ``vllm serve`` and print a ready-to-paste request.

    python -m dynin_vllm.demo.serve [MODEL] [--port 8000] [-- extra vllm args]

With no MODEL it serves the embedded tiny Dynin-Omni checkpoint (real layout,
random weights; built on first use under ``checkpoints/``), which stands in
for ``snu-aidas/Dynin-Omni`` where weights cannot be downloaded. It waits for
the server to be ready, prints example requests, sends one to show the answer,
and keeps serving until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from dynin_vllm.serving.launch import serve_command, served

DEFAULT_CHECKPOINT = Path("checkpoints") / "dynin-omni-tiny"


def ensure_tiny_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> Path:
    """Build the tiny Dynin-Omni checkpoint at ``path`` unless it is there."""
    if not (path / "model.safetensors.index.json").exists():
        from dynin_vllm.testing.make_checkpoint import make_checkpoint

        print(f"Building the tiny Dynin-Omni checkpoint in {path} ...", flush=True)
        make_checkpoint(path, "dynin")
    return path


#: The example completion request (``model`` is filled in).
EXAMPLE_COMPLETION = {
    "prompt": "The capital of France is",
    "max_tokens": 32,
    "temperature": 0,
    "vllm_xargs": {"block_length": 16, "steps": 16},
}
EXAMPLE_CHAT = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 32,
    "temperature": 0,
}


def example_requests(base: str, model: str) -> str:
    """Ready-to-paste ``curl`` commands for the completion and chat endpoints."""
    lines = []
    for path, body in (
        ("completions", EXAMPLE_COMPLETION),
        ("chat/completions", EXAMPLE_CHAT),
    ):
        payload = json.dumps({"model": model, **body})
        lines.append(
            f"curl -s {base}/v1/{path} -H 'Content-Type: application/json' "
            f"-d '{payload}'"
        )
    return "\n\n".join(lines)


def send_example(base: str, model: str) -> str:
    """Send the example completion; return its text."""
    body = json.dumps({"model": model, **EXAMPLE_COMPLETION}).encode()
    request = urllib.request.Request(
        f"{base}/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())["choices"][0]["text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="checkpoint dir or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--once", action="store_true", help="exit after the example request"
    )
    args, extra = parser.parse_known_args(argv)
    model = args.model or str(ensure_tiny_checkpoint())
    command = serve_command(model, args.host, args.port, extra)
    print("Starting:", " ".join(command), flush=True)
    try:
        with served(model, host=args.host, port=args.port, extra_args=extra) as server:
            base = server.base_url
            print("\nServer ready. Example requests:\n", flush=True)
            print(example_requests(base, model), flush=True)
            print(f"\nExample completion: {send_example(base, model)!r}\n", flush=True)
            if args.once:
                return 0
            print("Serving; press Ctrl-C to stop.", flush=True)
            return server.process.wait()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
