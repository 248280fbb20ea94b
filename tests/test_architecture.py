"""The shape of the code, checked: no import cycles anywhere, every service module imports only
from its own floor or below (the layers the README's architecture section draws), the two front
ends never import each other, and the packages keep their dependency rules (the service never
imports torch, the client neither torch nor onnxruntime). Imports inside functions count too: a
lazy import is still a dependency."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coordconv", "service", "training", "experiments", "client")

# service's floors, lowest first; a module may import from its floor or any below.
SERVICE_LAYERS: list[tuple[str, ...]] = [
    (
        "service.settings",
        "service.errors",
        "service.metrics",
        "service.logs",
        "service.memory",
        "service.probe",
    ),
    ("service.models",),
    ("service.dataplane", "service.scaling.cluster"),
    ("service.http", "service.grpc"),
    ("service.server", "service.scaling.ray_serve"),
    ("service.scaling.workers",),
    ("service.cli",),
]
FORBIDDEN = {
    "service": ("torch", "training", "experiments", "client"),
    "client": ("torch", "onnxruntime", "service", "training", "experiments"),
    "coordconv": (
        "torch",
        "onnxruntime",
        "service",
        "training",
        "experiments",
        "client",
        "fastapi",
        "httpx",
    ),
    # The science never depends on what runs it: recipes, campaign, report, commands.
    "training": ("experiments", "service", "client"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports (top level and inside functions), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int | None:
    for i, floor in enumerate(SERVICE_LAYERS):
        if any(name == p or name.startswith(p + ".") for p in floor):
            return i
    return None


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_service_module_has_a_floor() -> None:
    unplaced = [n for n in graph() if n.startswith("service.") and layer(n) is None]
    unplaced = [n for n in unplaced if modules()[n].name != "__init__.py"]
    assert unplaced == []


def test_no_service_module_imports_one_above_it() -> None:
    upward = []
    for name, targets in graph().items():
        own = layer(name)
        if own is None:
            continue
        for target in targets:
            floor = layer(target)
            if floor is not None and floor > own:
                upward.append(f"{name} (floor {own}) imports {target} (floor {floor})")
    assert upward == []


def test_the_front_ends_are_independent() -> None:
    crossing = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        for a, b in (("service.http", "service.grpc"), ("service.grpc", "service.http"))
        if name.startswith(a) and target.startswith(b)
    ]
    assert crossing == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_dependency_rules(package: str) -> None:
    bad: dict[str, list[str]] = defaultdict(list)
    for name, targets in graph().items():
        if name == package or name.startswith(package + "."):
            for target in targets:
                top = target.split(".")[0]
                if top in FORBIDDEN[package]:
                    bad[name].append(target)
    assert dict(bad) == {}
