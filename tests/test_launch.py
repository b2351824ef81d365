"""The ``vllm serve`` launcher and the shared engine settings, without vLLM.

``served`` is exercised with stand-in servers (small Python processes) in
place of ``vllm serve``: one that answers ``/health``, one that exits at once,
and one that never gets ready and ignores SIGINT.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynin_vllm.serving import launch
from dynin_vllm.serving.launch import Server, serve_command, served, wait_ready
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args


def test_cli_args_turns_engine_arguments_into_vllm_serve_flags():
    assert cli_args({"max_model_len": 512}) == ["--max-model-len", "512"]
    assert cli_args(
        {
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "seed": None,
            "gpu_memory_utilization": 0.3,
            "override_generation_config": {"block_length": 16},
            "served_model_name": ["a", "b"],
        }
    ) == [
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization",
        "0.3",
        "--override-generation-config",
        '{"block_length": 16}',
        "--served-model-name",
        "a",
        "b",
    ]


def test_shared_engine_args_as_flags():
    assert ENGINE_ARGS == {
        "dtype": "float32",
        "kv_cache_memory_bytes": 1 << 30,
        "max_model_len": 512,
        "max_num_seqs": 64,
        "enforce_eager": True,
        "seed": 0,
        "distributed_executor_backend": "uni",
    }
    assert cli_args(ENGINE_ARGS) == [
        "--dtype",
        "float32",
        "--kv-cache-memory-bytes",
        str(1 << 30),
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "64",
        "--enforce-eager",
        "--seed",
        "0",
        "--distributed-executor-backend",
        "uni",
    ]


def test_engine_utils_reexports_the_shared_definitions():
    from tests import engine_utils

    assert engine_utils.ENGINE_ARGS is ENGINE_ARGS
    assert engine_utils.free_port is launch.free_port


def test_serve_command_adds_the_cpu_kv_fraction_unless_given(monkeypatch):
    monkeypatch.setattr(launch, "on_cpu", lambda: True)
    command = serve_command("m", "127.0.0.1", 8123, ["--", "--dtype", "float32"])
    assert command[1:] == [
        "serve",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--gpu-memory-utilization",
        "0.3",
        "--dtype",
        "float32",
    ]
    assert Path(command[0]).name == "vllm"
    for given in (
        ["--gpu-memory-utilization", "0.5"],
        ["--gpu-memory-utilization=0.5"],
    ):
        command = serve_command(Path("m"), extra_args=given)
        assert command[2] == "m"
        assert command.count("0.3") == 0
        assert command[-len(given) :] == given

    monkeypatch.setattr(launch, "on_cpu", lambda: False)
    assert "--gpu-memory-utilization" not in serve_command("m")


def _fake_serve(monkeypatch, script: str) -> list[dict]:
    """Make ``served`` run ``script`` (formatted with the port) instead."""
    calls = []

    def fake(model, host="127.0.0.1", port=8000, extra_args=()):
        calls.append({"model": model, "host": host, "port": port, "extra": extra_args})
        code = textwrap.dedent(script).format(port=port)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(launch, "serve_command", fake)
    return calls


HEALTHY = """
    import http.server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

    print("listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", {port}), Health).serve_forever()
"""


def test_served_yields_a_ready_server_and_stops_it(monkeypatch, tmp_path):
    calls = _fake_serve(monkeypatch, HEALTHY)
    log = tmp_path / "logs" / "server.log"
    with served(tmp_path / "model", extra_args=["--seed", "1"], log_path=log) as srv:
        assert isinstance(srv, Server)
        port = calls[0]["port"]
        assert srv.base_url == f"http://127.0.0.1:{port}"
        assert srv.model == str(tmp_path / "model")
        assert srv.log_path == log
        assert srv.process.poll() is None
        assert calls[0]["extra"] == ["--seed", "1"]
    assert srv.process.poll() is not None
    assert "listening" in log.read_text()


def test_served_stops_the_server_when_the_body_raises(monkeypatch, tmp_path):
    _fake_serve(monkeypatch, HEALTHY)
    with (
        pytest.raises(ValueError, match="in the body"),
        served("m", port=launch.free_port(), log_path=tmp_path / "log") as srv,
    ):
        raise ValueError("in the body")
    assert srv.process.poll() is not None


def test_served_reports_a_server_that_exits_with_its_log_and_env(monkeypatch, tmp_path):
    _fake_serve(
        monkeypatch,
        """
        import os, sys
        print("boom:", os.environ["DYNIN_LAUNCH_TEST"], os.environ["PATH"] != "")
        sys.exit(3)
        """,
    )
    env = {"DYNIN_LAUNCH_TEST": "from-env"}
    with (
        pytest.raises(RuntimeError, match="exited with code 3") as err,
        served("m", env=env, log_path=tmp_path / "log", ready_timeout=30),
    ):
        pytest.fail("not ready, so never entered")
    assert "boom: from-env True" in str(err.value)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie is left."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def test_served_kills_a_server_that_never_gets_ready_and_ignores_sigint(
    monkeypatch, tmp_path
):
    pids = tmp_path / "pids"
    _fake_serve(
        monkeypatch,
        f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open({str(pids)!r}, "w") as f:
            f.write(str(os.getpid()) + " " + str(child.pid))
        time.sleep(60)
        """,
    )
    monkeypatch.setattr(launch, "STOP_TIMEOUT", 1.0)
    start = time.monotonic()
    with (
        pytest.raises(
            RuntimeError, match=r"not ready at http://127\.0\.0\.1:\d+ after 2 s"
        ),
        served("m", log_path=tmp_path / "log", ready_timeout=2),
    ):
        pytest.fail("not ready, so never entered")
    assert time.monotonic() - start < 20
    # Both the server and the process it started (vLLM's engine core) are gone.
    server_pid, child_pid = map(int, pids.read_text().split())
    assert _gone(server_pid)
    deadline = time.monotonic() + 5
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child_pid)


def test_wait_ready_times_out_and_leaves_the_process_to_the_caller():
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        with pytest.raises(RuntimeError, match="not ready"):
            wait_ready(f"http://127.0.0.1:{launch.free_port()}", process, timeout=1)
        assert process.poll() is None
    finally:
        launch._stop(process, timeout=5)
    assert process.poll() is not None
