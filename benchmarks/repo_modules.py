"""Import this repo's kernels without installing it (for the GPU scripts).

The GPU machine gets a copy of the working tree but no vLLM and no install, so
``dynin_vllm.kernels`` (the top-level ``kernels/`` folder, mapped by setup.py)
is loaded by path. Bare package objects stand in for ``dynin_vllm`` and
``dynin_vllm.diffusion`` so their ``__init__`` files are not executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_repo_modules() -> dict[str, types.ModuleType]:
    """``kernels/`` as ``dynin_vllm.kernels`` and ``noise.py``, by path."""
    if "dynin_vllm" not in sys.modules:
        for name, folder in [
            ("dynin_vllm", REPO / "dynin_vllm"),
            ("dynin_vllm.diffusion", REPO / "dynin_vllm" / "diffusion"),
        ]:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    if "dynin_vllm.kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "dynin_vllm.kernels",
            REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["dynin_vllm.kernels"] = module
        spec.loader.exec_module(module)
    names = ["triton_ops", "scoring", "selection", "maskgit"]
    mods = {n: importlib.import_module(f"dynin_vllm.kernels.{n}") for n in names}
    mods["noise"] = importlib.import_module("dynin_vllm.diffusion.noise")
    return mods
