"""Run the Triton kernels on CPU through Triton's interpreter.

``@triton.jit`` decides at decoration time whether a kernel is compiled or
interpreted, so ``TRITON_INTERPRET=1`` must be set when
``dynin_vllm.kernels.triton_ops`` is imported (the module is re-imported if
something loaded it earlier without it), and Triton imports more of itself
lazily at the first launch, so it is also set for every test here. It is
restored afterwards, so other test packages in the same session see the
environment they expect; ``ops`` asserts that the kernels are interpreted.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest


def _interpreted_kernels() -> ModuleType:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from triton.runtime.interpreter import InterpretedFunction

        from dynin_vllm.kernels import triton_ops

        if not isinstance(triton_ops._score_kernel, InterpretedFunction):
            triton_ops = importlib.reload(triton_ops)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return triton_ops


_OPS = _interpreted_kernels()


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def ops() -> ModuleType:
    """``dynin_vllm.kernels.triton_ops`` with every kernel interpreted on CPU."""
    from triton.runtime.interpreter import InterpretedFunction

    for name in dir(_OPS):
        obj = getattr(_OPS, name)
        if name.startswith("_") and name.endswith("_kernel"):
            assert isinstance(obj, InterpretedFunction), name
    return _OPS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Silence numpy's overflow/NaN warnings from interpreted kernels: masked
    lanes compute ``0 * inf`` and ``lowest - x`` overflows to ``-inf`` by
    design (results there are discarded or are the intended ``0`` / NaN)."""
    here = Path(__file__).parent
    quiet = pytest.mark.filterwarnings(
        "ignore::RuntimeWarning:triton.runtime.interpreter"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(quiet)
