"""The kernels lower to H100 machine code (no GPU needed).

The interpreter runs kernels as numpy code and never exercises Triton's GPU
lowering; ``compile_sm90.py`` compiles every kernel for sm_90 with Triton's
bundled ``ptxas``, in a subprocess without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_sm90.py")


def _nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia import compiler as nv

        return Path(nv.__file__).with_name("bin").joinpath("ptxas").exists()
    except ImportError:
        return False


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is absent")
def test_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("ok ")]
    assert len(lines) >= 9, result.stdout
    # The scoring kernel streams bf16 logits with 16-byte vector loads.
    assert all("v4 loads=True" in ln for ln in lines if ln.startswith("ok score cfg"))
