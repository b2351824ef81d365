"""Shared fixtures: tiny real-layout checkpoints and vLLM engines on CPU.

Checkpoints are written once per session with the project's own builder, so
the production loader is what every engine test exercises. Engines take about
15 s to start on CPU (in process); test modules share one through
module-scoped fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Offline engines run in the test process (with ENGINE_ARGS' ``uni`` worker):
# no engine-core or worker process to spawn, 25 s less per engine start. Set
# before any engine: vLLM caches its environment at the first one. Servers
# (AsyncLLM) always run their engine core in a process of its own.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per preset (dynin, llada, mmada)."""
    from dynin_vllm.testing.make_checkpoint import PRESETS, make_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(root / name, name) for name in PRESETS}


@pytest.fixture(scope="session")
def dynin_checkpoint(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["dynin"]


@pytest.fixture(scope="session")
def reference_model(dynin_checkpoint: Path):
    from dynin_vllm.reference.model import ReferenceLLaDA

    return ReferenceLLaDA.from_pretrained(dynin_checkpoint)


@pytest.fixture(scope="session")
def dynin_llm(dynin_checkpoint: Path):
    """One engine on the Dynin checkpoint, shared by the engine test modules."""
    from tests.engine_utils import make_llm, shutdown

    engine = make_llm(dynin_checkpoint, disable_log_stats=False)
    yield engine
    shutdown(engine)
