"""Canary for vLLM upgrades: every private vLLM API we use keeps its shape.

The tables live in ``dynin_vllm/vllm_private.py``. Besides checking them
against the installed vLLM, this finds every class of ours with a vLLM base
(and the classes made at run time: the non-causal attention backends and the
config hook) and fails when one overrides, calls or touches a vLLM member that
the tables do not list; so the canary cannot fall behind the code.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dynin_vllm import vllm_private
from dynin_vllm.compat import (
    SUPPORTED_VLLM,
    UnsupportedVLLMVersionError,
    check_vllm_version,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "dynin_vllm"

#: vLLM bases that are documented extension interfaces, not private seams:
#: subclasses of these need no canary table.
PUBLIC_BASES: dict[str, str] = {
    "vllm.v1.sample.logits_processor.interface:LogitsProcessor": (
        "the documented custom logits-processor interface"
    ),
}
#: Modules of public model-author interfaces and decorators.
PUBLIC_BASE_MODULES: tuple[str, ...] = (
    "vllm.model_executor.models.interfaces",
    "vllm.model_executor.models.interfaces_base",
    "vllm.compilation",
)

#: Class attributes that ``abc.ABCMeta`` gives every subclass.
ABC_INTERNALS = frozenset({"_abc_impl"})

#: The accessors of vllm_private.py returning a class we subclass.
ACCESSORS: dict[str, str] = {
    "scheduler_base": "vllm.v1.core.sched.scheduler:Scheduler",
    "cpu_runner_base": "vllm.v1.worker.cpu_model_runner:CPUModelRunner",
    "gpu_runner_base": "vllm.v1.worker.gpu_model_runner:GPUModelRunner",
    "cpu_worker_base": "vllm.v1.worker.cpu_worker:CPUWorker",
    "gpu_worker_base": "vllm.v1.worker.gpu_worker:Worker",
    "verify_and_update_config_base": (
        "vllm.model_executor.models.config:VerifyAndUpdateConfig"
    ),
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _resolve(path: str) -> Any:
    """``module:qualname`` (or a bare module) to the object."""
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _params(member: Any) -> tuple[str, ...]:
    if isinstance(member, property):  # its getter's parameters: ("self",)
        member = member.fget
    return tuple(inspect.signature(member).parameters)


def _is_vllm(cls: type) -> bool:
    return cls.__module__ == "vllm" or cls.__module__.startswith("vllm.")


def _is_ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "dynin_vllm"


def _is_public(cls: type) -> bool:
    return _path(cls) in PUBLIC_BASES or any(
        cls.__module__ == m or cls.__module__.startswith(f"{m}.")
        for m in PUBLIC_BASE_MODULES
    )


@cache
def _assigned_by_vllm(cls: type) -> frozenset[str]:
    """Instance attributes the vLLM classes of ``cls``'s MRO assign to ``self``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not _is_vllm(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return frozenset(names)


def _function(member: Any) -> Any:
    """The function behind a method, static/class method or property."""
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member if inspect.isfunction(member) else None


def _touched(fn: Any) -> set[str]:
    """Members ``fn`` reaches through its first parameter or ``super()``."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return set()
    tree = ast.parse(source)
    params = list(inspect.signature(fn).parameters)
    first = params[0] if params and not isinstance(fn, staticmethod) else None
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        through_self = isinstance(value, ast.Name) and value.id == first
        through_super = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "super"
        )
        if through_self or through_super:
            names.add(node.attr)
    return names


def _is_pass_through(fn: Any) -> bool:
    """``def f(self, *args, **kwargs)``: depends on no parameter of the base."""
    kinds = [p.kind for p in inspect.signature(fn).parameters.values()][1:]
    return kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


def _uncovered(
    ours: type,
    base: type,
    signatures: dict[str, tuple[str, ...]],
    attributes: tuple[str, ...],
) -> list[str]:
    """vLLM members of ``base`` that ``ours`` overrides, calls or touches, but
    the tables do not list."""
    our_classes = [k for k in ours.__mro__ if _is_ours(k)]
    defined = {
        name: member
        for klass in reversed(our_classes)
        for name, member in vars(klass).items()
    }
    vllm_members = _assigned_by_vllm(base) | set(dir(base))
    problems = []

    def require(name: str, where: str) -> None:
        if name not in vllm_members:
            return  # ours
        if name.startswith("__") and getattr(base, name, None) is getattr(
            object, name, None
        ):
            return  # object's, not vLLM's
        static = inspect.getattr_static(base, name, None)
        is_method = _function(static) is not None or inspect.isroutine(static)
        table, kind = (
            (signatures, "signature") if is_method else (attributes, "attribute")
        )
        if name not in table:
            problems.append(f"{where} uses vLLM {kind} {_path(base)}.{name}")

    for name, member in defined.items():
        fn = _function(member)
        if fn is None:
            if not (name.startswith("__") and name.endswith("__")) and (
                name not in ABC_INTERNALS
            ):
                require(name, f"{_path(ours)} (class attribute)")
            continue
        if not (name == "__init__" and _is_pass_through(fn)):
            require(name, f"{_path(ours)}.{name} (override)")
        for touched in sorted(_touched(fn)):
            if touched in defined:
                continue
            require(touched, f"{_path(ours)}.{name}")
    return sorted(set(problems))


def _modules_touching_vllm() -> list[str]:
    """Our modules that import vLLM or vllm_private (anywhere in the module)."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""] + [
                    f"{node.module}.{a.name}" for a in node.names
                ]
            if any(
                n.split(".")[0] == "vllm" or n == "dynin_vllm.vllm_private"
                for n in names
            ):
                parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found.append(".".join(parts))
                break
    return found


def _subclass_entries() -> list[tuple[type, type]]:
    """(class of ours, the vLLM class its canary tables are keyed by)."""
    entries: list[tuple[type, type]] = []
    problems: list[str] = []
    classes: dict[str, type] = {}
    for module_name in _modules_touching_vllm():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module_name:
                classes[_path(value)] = value
    # Made at run time: the config hook registered for our architectures.
    import dynin_vllm

    dynin_vllm.register()
    hooks = _resolve("vllm.model_executor.models.config:MODELS_CONFIG_MAP")
    for arch in dynin_vllm.ARCHITECTURES:
        classes.setdefault(f"config hook of {arch}", hooks[arch])
    for ours in classes.values():
        vllm_bases = [k for k in ours.__mro__ if _is_vllm(k)]
        if not vllm_bases:
            continue
        keyed = next(
            (k for k in vllm_bases if _path(k) in vllm_private.SUBCLASSED), None
        )
        loose = [
            _path(k)
            for k in vllm_bases
            if not _is_public(k) and (keyed is None or k not in keyed.__mro__)
        ]
        if loose:
            problems.append(
                f"{_path(ours)} subclasses {loose[0]}: add it to "
                "vllm_private.SUBCLASSED with its tables"
            )
        elif keyed is not None:
            entries.append((ours, keyed))
    assert not problems, "\n".join(problems)
    return entries


def _non_causal_backend_factory() -> Any:
    """``non_causal_backend``, wherever it lives in the package."""
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        if any(
            isinstance(n, ast.FunctionDef) and n.name == "non_causal_backend"
            for n in tree.body
        ):
            parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
            return importlib.import_module(".".join(parts)).non_causal_backend
    raise AssertionError("no non_causal_backend in dynin_vllm")


def _attention_backend(name: str) -> type:
    path = vllm_private.ATTENTION_BACKENDS[name]
    try:
        return _resolve(path)
    except ImportError as err:
        import torch

        if torch.cuda.is_available():
            raise
        pytest.skip(
            f"{name}: {path.partition(':')[0]} cannot be imported without CUDA "
            f"({err}); it is checked on a GPU machine"
        )


# --------------------------------------------------------------------------
# The tables match the installed vLLM
# --------------------------------------------------------------------------
TABLES = {**vllm_private.SUBCLASSED, **vllm_private.TOUCHED}


@pytest.mark.parametrize("path", sorted(TABLES))
def test_overridden_private_methods_keep_their_parameters(path):
    cls = _resolve(path)
    signatures, attributes = TABLES[path]
    changed = {
        name: _params(getattr(cls, name)) if hasattr(cls, name) else "missing"
        for name, params in signatures.items()
        if not hasattr(cls, name) or _params(getattr(cls, name)) != params
    }
    assert not changed, f"{path}: {changed}"
    fields = getattr(cls, "__dataclass_fields__", {})
    missing = [
        a
        for a in attributes
        if a not in _assigned_by_vllm(cls) and not hasattr(cls, a) and a not in fields
    ]
    assert not missing, f"{path} no longer has the attributes {missing}"


@pytest.mark.parametrize(("accessor", "path"), sorted(ACCESSORS.items()))
def test_accessors_return_the_classes_the_tables_describe(accessor, path):
    assert path in vllm_private.SUBCLASSED
    assert getattr(vllm_private, accessor)() is _resolve(path)


@pytest.mark.parametrize("path", sorted(vllm_private.CALL_KEYWORDS))
def test_keywords_we_pass_to_vllm_constructors_are_accepted(path):
    parameters = inspect.signature(_resolve(path)).parameters
    ours = vllm_private.CALL_KEYWORDS[path]
    unknown = [k for k in ours if k not in parameters]
    required = [
        name
        for name, p in parameters.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in ours
    ]
    assert not unknown, f"{path} no longer takes {unknown}"
    assert not required, f"{path} now requires {required}"


@pytest.mark.parametrize("path", sorted(vllm_private.CALL_SIGNATURES))
def test_vllm_callables_we_call_positionally_keep_their_parameters(path):
    assert _params(_resolve(path)) == vllm_private.CALL_SIGNATURES[path]


@pytest.mark.parametrize("path", sorted(vllm_private.REPLACED_FIELDS))
def test_dataclass_fields_we_replace_exist(path):
    fields = {f.name for f in dataclasses.fields(_resolve(path)) if f.init}
    missing = set(vllm_private.REPLACED_FIELDS[path]) - fields
    assert not missing, f"{path} has no init fields {missing}"


@pytest.mark.parametrize("module", sorted(vllm_private.PATCHED_ATTRIBUTES))
def test_module_attributes_we_swap_exist(module):
    imported = importlib.import_module(module)
    missing = [
        a for a in vllm_private.PATCHED_ATTRIBUTES[module] if not hasattr(imported, a)
    ]
    assert not missing, f"{module} has no {missing}"


@pytest.mark.parametrize("name", sorted(vllm_private.ATTENTION_BACKENDS))
def test_attention_backends_we_wrap_keep_their_builder(name):
    backend = _attention_backend(name)
    builder = backend.get_builder_cls()
    for cls, table in (
        (backend, vllm_private.ATTENTION_BACKEND_SIGNATURES),
        (builder, vllm_private.ATTENTION_BUILDER_SIGNATURES),
    ):
        for method, params in table.items():
            assert _params(getattr(cls, method)) == params, f"{_path(cls)}.{method}"
    assert backend.supports_non_causal(), name
    # The wrapper switches ``causal`` off in the metadata it is given.
    assert (
        "causal"
        in vllm_private.REPLACED_FIELDS[
            "vllm.v1.attention.backend:CommonAttentionMetadata"
        ]
    )


# --------------------------------------------------------------------------
# The tables cover what the code uses
# --------------------------------------------------------------------------
def test_every_vllm_member_our_subclasses_use_is_in_the_canary():
    """Overriding, calling or touching a new vLLM member fails here until the
    tables in vllm_private.py list it."""
    entries = _subclass_entries()
    bases = {_path(base) for _, base in entries}
    # The seams the engine cannot run without (guards against a vacuous pass).
    assert {
        "vllm.v1.core.sched.scheduler:Scheduler",
        "vllm.v1.worker.cpu_model_runner:CPUModelRunner",
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner",
        "vllm.v1.worker.cpu_worker:CPUWorker",
        "vllm.v1.worker.gpu_worker:Worker",
        "vllm.model_executor.models.config:VerifyAndUpdateConfig",
    } <= bases, bases
    problems = []
    for ours, base in entries:
        signatures, attributes = vllm_private.SUBCLASSED[_path(base)]
        problems += _uncovered(ours, base, signatures, attributes)
    assert not problems, "add to the tables in vllm_private.py:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(vllm_private.ATTENTION_BACKENDS))
def test_the_non_causal_wrapper_overrides_only_listed_members(name):
    backend = _attention_backend(name)
    ours = _non_causal_backend_factory()(backend)
    problems = _uncovered(
        ours, backend, vllm_private.ATTENTION_BACKEND_SIGNATURES, ()
    ) + _uncovered(
        ours.get_builder_cls(),
        backend.get_builder_cls(),
        vllm_private.ATTENTION_BUILDER_SIGNATURES,
        (),
    )
    assert not problems, "\n".join(problems)
    assert ours.get_builder_cls().__mro__[1] is backend.get_builder_cls()


# --------------------------------------------------------------------------
# The supported range
# --------------------------------------------------------------------------
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
