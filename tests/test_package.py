"""Packaging and registration: entry point, idempotence, light import, and a
wheel that works installed (not only as an editable install)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dynin_vllm

REPO = Path(__file__).resolve().parents[1]


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
    """The kernels are ``dynin_vllm.kernels``: we install no top-level
    ``kernels`` package (it would shadow, or be shadowed by, someone else's)."""
    out = _run(
        "import importlib.util, dynin_vllm.kernels as k; "
        "print(importlib.util.find_spec('kernels') is None, k.__name__)"
    )
    assert out == "True dynin_vllm.kernels"
    dist = importlib.metadata.distribution("dynin-vllm")
    assert (dist.read_text("top_level.txt") or "").split() == ["dynin_vllm"]


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
    assert out.splitlines()[-1] == (
        "dynin_vllm.model.dynin_omni DyninOmniForMaskedDiffusion"
    )


# --------------------------------------------------------------------------
# The built wheel, installed into a plain directory
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build a wheel of the working tree and install it with ``--target``.

    The wheel is built from a copy of the project (its top-level files and the
    package, without caches), so the build neither writes ``build/`` into the
    repository nor picks up stale files from an earlier ``build/lib``.
    Returns (wheel, install directory).
    """
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, source / path.name)
    shutil.copytree(
        REPO / "dynin_vllm",
        source / "dynin_vllm",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist, target = root / "dist", root / "site"
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", dist, source, cwd=root)
    (wheel,) = dist.glob("dynin_vllm-*.whl")
    _pip("install", "--no-deps", "--target", target, wheel, cwd=root)
    return wheel, target


def _pip(*args: object, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _installed_env(target: Path) -> dict[str, str]:
    """A process environment in which the installed copy comes first.

    ``PYTHONPATH`` entries precede site-packages, whose editable-install
    finder (``__editable___dynin_vllm_*_finder``) sits at the end of
    ``sys.meta_path``; the tests check the result rather than assume it.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(target)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _inside(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def test_wheel_holds_the_package_only(installed_wheel):
    wheel, _ = installed_wheel
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        top_level_text = archive.read(top_level).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dynin_vllm"}
    assert top_level_text.split() == ["dynin_vllm"]
    assert not any(n.startswith("kernels/") for n in names)
    # Every module of the source tree (a subpackage without ``__init__.py``
    # would be dropped silently), the kernels and the chat templates.
    package = REPO / "dynin_vllm"
    expected = {
        p.relative_to(REPO).as_posix()
        for pattern in ("**/*.py", "serving/templates/*.jinja")
        for p in package.glob(pattern)
        if "__pycache__" not in p.parts
    }
    assert not expected - names, sorted(expected - names)
    assert {
        "dynin_vllm/kernels/__init__.py",
        "dynin_vllm/kernels/noise.py",
        "dynin_vllm/kernels/triton_ops.py",
    } <= names
    assert any(
        n.startswith("dynin_vllm/serving/templates/") and n.endswith(".jinja")
        for n in names
    )


def test_installed_kernels_import_from_the_install(installed_wheel, tmp_path):
    """``import dynin_vllm.kernels`` from the install, with the repository not
    importable (cwd elsewhere) and the venv's editable install shadowed."""
    _, target = installed_wheel
    code = (
        "import importlib.util, json, sys\n"
        "import dynin_vllm, dynin_vllm.kernels\n"
        "from dynin_vllm.kernels import noise\n"
        "from dynin_vllm.serving import chat_templates\n"
        "print(json.dumps({\n"
        "    'files': [dynin_vllm.__file__, dynin_vllm.kernels.__file__,\n"
        "              noise.__file__, chat_templates.__file__],\n"
        "    'top_level_kernels': importlib.util.find_spec('kernels') is not None,\n"
        "    'vllm': 'vllm' in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_installed_env(target),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(_inside(f, target) for f in found["files"]), found
    assert not found["top_level_kernels"] and not found["vllm"], found


# Over a minute on 2 CPU cores (Triton's interpreter).
@pytest.mark.slow
def test_gpu_kernels_benchmark_runs_from_the_install(installed_wheel, tmp_path):
    """``benchmarks/gpu_kernels.py --dry-run`` against the installed wheel.

    Its correctness checks only (``--skip-timing``): the whole dry run,
    timings included, is ``tests/kernels/test_kernels_gpu_script.py``. The
    script runs through ``runpy`` exactly as ``python script.py`` would (its
    folder first on ``sys.path``), so the test can read which
    ``dynin_vllm.kernels`` it used. About a minute on 2 CPU cores (Triton's
    interpreter).
    """
    _, target = installed_wheel
    script = REPO / "benchmarks" / "gpu_kernels.py"
    out = tmp_path / "kernels_dry.json"
    bootstrap = (
        "import os, runpy, sys\n"
        "script = sys.argv[1]\n"
        "sys.argv = sys.argv[1:]\n"
        "sys.path[0] = os.path.dirname(script)\n"
        "try:\n"
        "    runpy.run_path(script, run_name='__main__')\n"
        "finally:\n"
        "    print('KERNELS_FROM=' + sys.modules['dynin_vllm.kernels'].__file__)\n"
    )
    args = ["--dry-run", "--skip-timing", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", bootstrap, str(script), *args],
        env=_installed_env(target),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    used = result.stdout.rsplit("KERNELS_FROM=", 1)[1].strip()
    assert _inside(used, target), used
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["mode"] == "dry-run", report
    assert report["vllm_imported"] is False
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
