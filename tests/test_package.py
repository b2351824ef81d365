"""Packaging and registration: entry point, idempotence, light import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import dynin_vllm


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def test_entry_point_is_a_vllm_general_plugin():
    entries = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [e for e in entries if e.value == "dynin_vllm:register"]
    assert len(ours) == 1


def test_import_is_light_and_touches_no_device():
    out = _run(
        "import sys, dynin_vllm; "
        "print('vllm' in sys.modules, 'torch' in sys.modules, 'transformers' in "
        "sys.modules)"
    )
    assert out == "False False False"


def test_kernels_install_under_our_namespace_only():
    out = _run(
        "import importlib.util, dynin_vllm.kernels as k; "
        "print(importlib.util.find_spec('kernels') is None, k.__name__)"
    )
    assert out == "True dynin_vllm.kernels"


def test_register_is_idempotent_and_registers_everything():
    dynin_vllm.register()
    dynin_vllm.register()
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from dynin_vllm.configs import CONFIG_CLASSES

    supported = ModelRegistry.get_supported_archs()
    for arch in dynin_vllm.ARCHITECTURES:
        assert arch in supported
        assert MODELS_CONFIG_MAP[arch].__name__ == "MaskedDiffusionConfigHook"
    for config_cls in CONFIG_CLASSES:
        assert _CONFIG_REGISTRY[config_cls.model_type] is config_cls
        assert type(AutoConfig.for_model(config_cls.model_type)) is config_cls


def test_registration_works_in_a_fresh_interpreter():
    """vLLM inspects lazily registered models in a new process."""
    out = _run(
        "from vllm.plugins import load_general_plugins; load_general_plugins(); "
        "from vllm import ModelRegistry; "
        "cls = ModelRegistry._try_load_model_cls('DyninOmniModelLM'); "
        "print(cls.__module__, cls.__name__)"
    )
    assert out.splitlines()[-1] == "dynin_vllm.model.llada LLaDAForMaskedDiffusion"
