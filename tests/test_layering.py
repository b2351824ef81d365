"""The package's import graph: no cycles, layers read bottom-up, one private seam.

Static (``ast``, nothing is imported): every module of ``dynin_vllm``, with its
module-level and function-level imports (``TYPE_CHECKING`` ones included),
absolute and relative. Strings naming one of our modules (the classes vLLM
loads by name: ``"dynin_vllm.engine.scheduler.DiffusionScheduler"``) are
dependencies too; they count for the layers but not for cycles, since they are
not imported when the module is. So do the lazy imports of ``register()`` in
the package root (see ``ENTRY_WIRING``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "dynin_vllm"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
PRIVATE_MODULE = f"{PACKAGE}.vllm_private"

# The layers, bottom-up (README "Layout"). A module belongs to the layer of the
# longest prefix listed below (the package root only by its exact name); a new
# subpackage must be given a layer here.
#
#   base        the package root (constants; its module level imports nothing
#               of ours), compat (version range), vllm_private (every private
#               vLLM accessor), configs (HF config classes)
#   kernels     Triton kernels, their torch references and the noise; imports
#               nothing of ours outside itself (it runs without vLLM)
#   multimodal  codecs and media I/O, beside the language stack
#   diffusion   denoising policies and per-request state, pure torch
#   model       the backbone in vLLM layers
#   engine      the vLLM seams: config hook, scheduler, runner, worker
#   serving     endpoints, metrics, chat templates, launch helpers
#   reference   the independent pure-torch oracle: it shares only the kernels
#               (the noise) with the engine, and no production layer imports it
#   testing     checkpoint builders; demo: the main job and the example
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (PACKAGE, f"{PACKAGE}.compat", PRIVATE_MODULE, f"{PACKAGE}.configs"),
    "kernels": (f"{PACKAGE}.kernels",),
    "multimodal": (f"{PACKAGE}.multimodal",),
    "diffusion": (f"{PACKAGE}.diffusion",),
    "model": (f"{PACKAGE}.model",),
    "engine": (f"{PACKAGE}.engine",),
    "serving": (f"{PACKAGE}.serving",),
    "reference": (f"{PACKAGE}.reference",),
    "testing": (f"{PACKAGE}.testing",),
    "demo": (f"{PACKAGE}.demo",),
}

_STACK = ("base", "kernels", "multimodal", "diffusion", "model", "engine")

#: The layers each layer may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "kernels": frozenset(),
    "multimodal": frozenset({"base"}),
    "diffusion": frozenset({"base", "kernels"}),
    "model": frozenset({"base", "kernels", "multimodal", "diffusion"}),
    "engine": frozenset({"base", "kernels", "multimodal", "diffusion", "model"}),
    "serving": frozenset(_STACK),
    # The codecs are checked against upstream's outputs on their own; the
    # reference pipelines encode media with them.
    "reference": frozenset({"kernels", "multimodal"}),
    "testing": frozenset({*_STACK, "serving", "reference"}),
    "demo": frozenset({*_STACK, "serving", "reference", "testing"}),
}

#: The one exception: ``register()`` in the package root, vLLM's plugin entry
#: point, wires configs, the model class (by name) and the engine config hook,
#: importing them when called. These lazy imports are the wiring, not a
#: dependency of the root's module, so they are checked against this set and
#: left out of the cycle check.
ENTRY_WIRING: frozenset[str] = frozenset({"base", "model", "engine", "serving"})

#: Temporary: edges that break the layering today, to be moved, not extended.
#: (src module, dst module). Remove an entry when its edge is gone.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

#: Private vLLM names and module paths that only ``vllm_private.py`` may
#: mention (in code; docstrings and comments are not checked).
PRIVATE_VLLM_MARKERS: tuple[str, ...] = (
    "_CONFIG_REGISTRY",
    "MODELS_CONFIG_MAP",
    "VerifyAndUpdateConfig",
    "model_executor.models.config",
    "model_executor.layers.attention",
    "v1.core.sched",
    "v1.worker",
    "v1.request",
    "v1.outputs",
    "v1.metrics.stats",
    "v1.spec_decode",
    "v1.engine",
    "SpeculativeConfig",
    "RequestSpecDecodeMetrics",
    "SamplerOutput",
    "grammar_compile_error_reqs",
    "_spec_decoding_cls",
)

#: Temporary: (module, marker) uses of private vLLM APIs outside
#: vllm_private.py, to be moved behind an accessor there. Remove an entry when
#: its use is gone.
KNOWN_PRIVATE_USES: frozenset[tuple[str, str]] = frozenset(
    {
        # builds vLLM's SpecDecodingStats itself
        (f"{PACKAGE}.engine.stats", "v1.spec_decode"),
        # swaps vllm.v1.engine.llm_engine.StatLoggerManager
        (f"{PACKAGE}.serving.metrics", "v1.engine"),
        # sets PrometheusStatLogger's private _spec_decoding_cls
        (f"{PACKAGE}.serving.metrics", "_spec_decoding_cls"),
    }
)

#: Public vLLM modules that vllm_private.py may share with everyone.
PUBLIC_VLLM_MODULES = frozenset({"vllm", "vllm.logger"})

#: A string naming one of our modules or something in one (not the bare name).
_DYNAMIC_REF = re.compile(rf"{PACKAGE}(\.\w+)+(:\w+)?|{PACKAGE}:\w+")


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    kind: str  # "module", "function" (an import inside a def) or "string"
    imported: tuple[str, ...] = ()  # names taken with ``from dst import ...``

    def __str__(self) -> str:
        path = _modules()[self.src].relative_to(PACKAGE_DIR.parent)
        return f"{self.src} -> {self.dst} ({path}:{self.line}, {self.kind})"


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their name)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


@cache
def _tree(module: str) -> ast.Module:
    path = _modules()[module]
    return ast.parse(path.read_text("utf-8"), filename=str(path))


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def _owner(name: str) -> str | None:
    """The longest prefix of dotted ``name`` that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in _modules():
            return candidate
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.depth = 0  # nesting of function bodies
        self.edges: list[Edge] = []
        self.unresolved: list[str] = []
        self.docstrings = {id(d) for d in _docstrings(_tree(module))}

    def _kind(self) -> str:
        return "function" if self.depth else "module"

    def _add(self, dst: str | None, node: ast.AST, kind: str, names=()) -> None:
        if dst is not None:
            self.edges.append(Edge(self.module, dst, node.lineno, kind, names))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(f"{PACKAGE}."):
                if alias.name not in _modules():
                    self.unresolved.append(f"{self.module}:{node.lineno}: {alias.name}")
                self._add(_owner(alias.name), node, self._kind())

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node)
        if base != PACKAGE and not base.startswith(f"{PACKAGE}."):
            return
        if base not in _modules():
            self.unresolved.append(f"{self.module}:{node.lineno}: {base}")
            self._add(_owner(base), node, self._kind())
            return
        plain = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in _modules():
                self._add(submodule, node, self._kind())
            else:
                plain.append(alias.name)
        if plain:
            self._add(base, node, self._kind(), tuple(plain))

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if (
            isinstance(value, str)
            and id(node) not in self.docstrings
            and _DYNAMIC_REF.fullmatch(value)
        ):
            dotted = value.replace(":", ".")
            owner = _owner(dotted)
            rest = dotted[len(owner) + 1 :] if owner else dotted
            if (
                owner is None
                or rest.count(".")
                or (rest and rest not in _bound_names(_tree(owner)))
            ):
                self.unresolved.append(f"{self.module}:{node.lineno}: {value!r}")
            self._add(owner, node, "string")


def _docstrings(tree: ast.Module) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                yield body[0].value


@cache
def _collect(module: str) -> _Collector:
    collector = _Collector(module)
    collector.visit(_tree(module))
    return collector


def _edges() -> list[Edge]:
    return [e for m in _modules() for e in _collect(m).edges if e.src != e.dst]


def _layer(module: str) -> str | None:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            inside = module == prefix or (
                prefix != PACKAGE and module.startswith(f"{prefix}.")
            )
            if inside and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    return best


def _is_wiring(edge: Edge) -> bool:
    """A lazy import (or name) in the package root: ``register()``'s wiring."""
    return edge.src == PACKAGE and edge.kind != "module"


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at import time (what ``from m import x`` can take)."""
    names: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = (
                    stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                )
                for target in targets:
                    for node in ast.walk(target):
                        if isinstance(node, ast.Name):
                            names.add(node.id)
            elif isinstance(stmt, ast.If | ast.Try | ast.With | ast.For | ast.While):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(stmt, block, []):
                        if isinstance(child, ast.ExceptHandler):
                            visit(child.body)
                        else:
                            visit([child])

    visit(tree.body)
    return names


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------
def test_the_package_is_found_and_parsed():
    modules = _modules()
    for name in (PACKAGE, PRIVATE_MODULE, f"{PACKAGE}.kernels.noise"):
        assert name in modules, name
    assert _edges(), "no intra-package import found: the parser is broken"


def test_every_intra_package_import_resolves():
    """After a move, a stale ``from dynin_vllm.x import y`` fails here first."""
    problems = [p for m in _modules() for p in _collect(m).unresolved]
    for edge in _edges():
        if edge.kind == "string" or not edge.imported:
            continue
        tree = _tree(edge.dst)
        if "__getattr__" in _bound_names(tree):
            continue
        missing = set(edge.imported) - _bound_names(tree) - {"*"}
        problems += [f"{edge}: {edge.dst} has no {name!r}" for name in sorted(missing)]
    assert not problems, "imports of ours that do not resolve:\n" + "\n".join(problems)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for edge in _edges():
        if edge.kind != "string" and not _is_wiring(edge):
            graph[edge.src].add(edge.dst)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest path back to ``start`` inside the component (BFS).
        parents: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        found = v
                        break
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = parents.get(v)
        cycles.append([*path, start])
    return cycles


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if _layer(m) is None]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"
    assert set(ALLOWED) == set(LAYERS)


def test_layers_import_only_downwards():
    violations = set()
    messages = []
    for edge in _edges():
        src, dst = _layer(edge.src), _layer(edge.dst)
        allowed = ENTRY_WIRING if _is_wiring(edge) else ALLOWED[src]
        if src == dst or dst in allowed:
            continue
        violations.add((edge.src, edge.dst))
        if (edge.src, edge.dst) not in KNOWN_VIOLATIONS:
            messages.append(f"{edge}: layer {src!r} may not import {dst!r}")
    stale = sorted(KNOWN_VIOLATIONS - violations)
    assert not messages, "layering violations:\n" + "\n".join(messages)
    assert not stale, f"fixed; remove from KNOWN_VIOLATIONS: {stale}"


def test_registration_entry_point_imports_lazily():
    """``import dynin_vllm`` stays light: only ``register()`` imports ours."""
    eager = [str(e) for e in _collect(PACKAGE).edges if e.kind == "module"]
    assert not eager, eager


def test_the_reference_stays_independent():
    """The oracle shares only the kernels (the noise) and the media codecs
    (checked against upstream's outputs on their own) with the engine, and no
    production layer depends on it."""
    deps = sorted({e.dst for e in _edges() if _layer(e.src) == "reference"})
    assert {_layer(d) for d in deps} <= {"reference", "kernels", "multimodal"}, deps
    users = sorted(
        {
            e.src
            for e in _edges()
            if _layer(e.dst) == "reference"
            and _layer(e.src) not in ("reference", "testing", "demo")
        }
    )
    assert not users, f"production modules importing the reference: {users}"


@cache
def _code_text(module: str) -> str:
    """The module's code without comments and docstrings."""
    tree = ast.parse(_modules()[module].read_text("utf-8"))  # a copy to edit
    for doc in _docstrings(tree):
        doc.value = ""
    return ast.unparse(tree)


def test_private_vllm_names_only_in_vllm_private():
    uses = {
        (module, marker)
        for module in _modules()
        if module != PRIVATE_MODULE
        for marker in PRIVATE_VLLM_MARKERS
        if marker in _code_text(module)
    }
    offenders = sorted(uses - KNOWN_PRIVATE_USES)
    assert not offenders, (
        "private vLLM APIs outside dynin_vllm/vllm_private.py (add an accessor "
        "there):\n" + "\n".join(f"{m}: {marker}" for m, marker in offenders)
    )
    stale = sorted(KNOWN_PRIVATE_USES - uses)
    assert not stale, f"fixed; remove from KNOWN_PRIVATE_USES: {stale}"


def _vllm_imports(module: str) -> set[tuple[str, str]]:
    """(vLLM module, name) pairs a module imports; name "" for ``import m``."""
    pairs = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            pairs |= {
                (a.name, "") for a in node.names if a.name.split(".")[0] == "vllm"
            }
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] == "vllm"
        ):
            pairs |= {(node.module, a.name) for a in node.names}
    return pairs


def test_vllm_apis_behind_an_accessor_are_used_only_through_it():
    """What vllm_private.py imports from vLLM, nobody else imports."""
    private = {
        pair
        for pair in _vllm_imports(PRIVATE_MODULE)
        if pair[0] not in PUBLIC_VLLM_MODULES
    }
    offenders = [
        f"{module}: from {mod} import {name}"
        for module in _modules()
        if module != PRIVATE_MODULE
        for mod, name in sorted(_vllm_imports(module) & private)
    ]
    assert not offenders, "use the vllm_private accessor:\n" + "\n".join(offenders)
