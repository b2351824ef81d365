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
    # (Re)built when incomplete, e.g. from before it shipped its image codec.
    if not all(
        (path / name).exists() for name in ("model.safetensors.index.json", "magvitv2")
    ):
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


def _example_image_url() -> str:
    """A small PNG (a colour gradient) as a data URL."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


#: Image understanding: a chat turn with an image part.
EXAMPLE_IMAGE_CHAT = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _example_image_url()}},
                {"type": "text", "text": "What is in this image?"},
            ],
        }
    ],
    "max_tokens": 16,
    "temperature": 0,
}


def example_requests(base: str, model: str) -> str:
    """Ready-to-paste ``curl`` commands for the completion and chat endpoints."""
    lines = []
    for path, body in (
        ("completions", EXAMPLE_COMPLETION),
        ("chat/completions", EXAMPLE_CHAT),
        ("chat/completions", EXAMPLE_IMAGE_CHAT),
    ):
        payload = json.dumps({"model": model, **body})
        lines.append(
            f"curl -s {base}/v1/{path} -H 'Content-Type: application/json' "
            f"-d '{payload}'"
        )
    return "\n\n".join(lines)


def _post(base: str, path: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/v1/{path}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def send_example(base: str, model: str) -> str:
    """Send the example completion; return its text."""
    body = {"model": model, **EXAMPLE_COMPLETION}
    return _post(base, "completions", body)["choices"][0]["text"]


def send_image_example(base: str, model: str) -> str:
    """Send the image-understanding chat example; return its answer."""
    body = {"model": model, **EXAMPLE_IMAGE_CHAT}
    return _post(base, "chat/completions", body)["choices"][0]["message"]["content"]


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
            print(f"\nExample completion: {send_example(base, model)!r}", flush=True)
            answer = send_image_example(base, model)
            print(f"Example image chat: {answer!r}\n", flush=True)
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
