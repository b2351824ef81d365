"""Canary for vLLM upgrades: the private methods we override keep their shape."""

from __future__ import annotations

import inspect

import pytest

from dynin_vllm.compat import (
    SUPPORTED_VLLM,
    UnsupportedVLLMVersionError,
    check_vllm_version,
)
from dynin_vllm import vllm_private


@pytest.mark.parametrize(
    ("base", "signatures"),
    [
        (vllm_private.gpu_runner_base, vllm_private.RUNNER_SIGNATURES),
        (vllm_private.scheduler_base, vllm_private.SCHEDULER_SIGNATURES),
    ],
)
def test_overridden_private_methods_keep_their_parameters(base, signatures):
    cls = base()
    for name, params in signatures.items():
        method = getattr(cls, name)
        assert tuple(inspect.signature(method).parameters) == params, name


def test_installed_vllm_is_in_the_supported_range():
    version = check_vllm_version()
    assert version.base_version in SUPPORTED_VLLM


def test_unsupported_vllm_fails_naming_the_range(monkeypatch):
    monkeypatch.delenv("DYNIN_VLLM_ALLOW_UNSUPPORTED_VLLM", raising=False)
    with pytest.raises(UnsupportedVLLMVersionError, match=r"<0\.34.*0\.31\.2"):
        check_vllm_version("0.31.2")
    with pytest.raises(UnsupportedVLLMVersionError, match=r"0\.34\.0"):
        check_vllm_version("0.34.0")
    monkeypatch.setenv("DYNIN_VLLM_ALLOW_UNSUPPORTED_VLLM", "1")
    assert str(check_vllm_version("0.34.0")) == "0.34.0"
