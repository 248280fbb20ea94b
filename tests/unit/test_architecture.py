"""The shape of the code, checked: no import cycles anywhere, every service module imports only
from its own floor or below (the layers the README's architecture section draws), the two front
ends never import each other, the packages keep their dependency rules (the service never
imports torch, the client neither torch nor onnxruntime), the generic model layer never imports
the CoordConv contract (its task rules are given to it from above), and no service module grows
past MAX_LINES. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordconv", "service", "training", "experiments", "client")

# service's floors, lowest first; a module may import from its floor or any below.
SERVICE_LAYERS: list[tuple[str, ...]] = [
    (
        "service.settings",
        "service.errors",
        "service.lifecycle",
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
# A module past this holds more than one concern: split it by concern.
MAX_LINES = 400
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


def test_the_generic_model_layer_never_imports_the_coordconv_contract() -> None:
    """service/models serves any model Triton's rules accept; what a CoordConv task requires
    comes in as task rules (service/models/rules.py, given by service/dataplane/tasks.py)."""
    found = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        if name == "service.models" or name.startswith("service.models.")
        for target in targets
        if target == "coordconv.contract"
    ]
    assert found == []


def test_no_service_module_is_longer_than_max_lines() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if name.startswith("service")
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


# -- every import declared ----------------------------------------------------------------------

# Which extras each package may import from (besides the core dependencies): what it runs with.
EXTRAS: dict[str, tuple[str, ...]] = {
    "coordconv": (),
    "service": ("serve",),
    "client": ("client",),
    "training": ("train",),
    "experiments": ("train",),
    # The tests and benchmarks run with every extra installed (`make test`); what they alone
    # import is the dev extra's.
    "tests": ("dev", "serve", "client", "train", "tracing", "ray"),
    "benchmarks": ("dev", "serve", "client", "train", "tracing", "ray"),
}
# Modules that import an optional extra of their package's, lazily, saying so when it is missing.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "service.metrics.tracing": ("tracing",),
    "service.scaling.ray_serve": ("ray",),
}
# Installed beside the extra instead of declared in it, and why.
BESIDE: dict[tuple[str, str], str] = {
    ("training", "onnxruntime"): "serve declares onnxruntime-gpu; train cannot declare either "
    "package without two of them in one environment (`make` installs every extra together; "
    "the trainer image adds the CPU package to the train extra)",
}
# Run in environments of their own (benchmarks/peers.py makes them), not this distribution's.
OWN_ENVIRONMENTS = ("benchmarks.peer_servers",)
FIRST_PARTY = {*PACKAGES, "tests", "benchmarks", "experiments"}


def _requirement_name(requirement: str) -> str:
    import re

    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _canonical(match[1])


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """pyproject.toml's distributions by extra ("" for the core dependencies)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {"": {_requirement_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        out[extra] = {_requirement_name(r) for r in requirements}
    return out


def third_party_imports() -> dict[str, set[str]]:
    """Every module outside the standard library and this repository that each module imports
    (top level and inside functions), by importing module."""
    import sys

    found: dict[str, set[str]] = {}
    for top in sorted(EXTRAS):
        folder = ROOT / top
        for path in folder.rglob("*.py") if folder.is_dir() else ():
            name = module_name(path)
            if name.startswith(OWN_ENVIRONMENTS):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    targets = [node.module]
                else:
                    continue
                for target in targets:
                    root = target.split(".")[0]
                    if root not in sys.stdlib_module_names and root not in FIRST_PARTY:
                        found.setdefault(name, set()).add(target)
    return found


@functools.cache
def _top_level() -> Mapping[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


@functools.cache
def distributions_of(module: str) -> frozenset[str]:
    """The installed distributions that provide `module` (a namespace package such as
    `opentelemetry` is narrowed to those holding the submodule)."""
    from importlib import metadata

    candidates = _top_level().get(module.split(".")[0], [])
    if len(candidates) > 1:
        path = module.replace(".", "/")
        narrowed = [
            d
            for d in candidates
            if any(
                str(f) == f"{path}.py" or str(f).startswith(f"{path}/")
                for f in metadata.distribution(d).files or ()
            )
        ]
        candidates = narrowed or candidates
    return frozenset(_canonical(d) for d in candidates)


def test_every_third_party_import_is_declared_in_the_extra_that_uses_it() -> None:
    extras = declared()
    undeclared = []
    for name, targets in sorted(third_party_imports().items()):
        allowed = set(extras[""])
        for extra in EXTRAS[name.split(".")[0]] + OPTIONAL.get(name, ()):
            allowed |= extras[extra]
        for target in sorted(targets):
            if (name.split(".")[0], target.split(".")[0]) in BESIDE:
                continue
            provided = distributions_of(target)
            if not provided:
                undeclared.append(f"{name}: {target} (not installed: which distribution?)")
            elif not provided & allowed:
                undeclared.append(f"{name}: {target} ({', '.join(sorted(provided))})")
    assert undeclared == []


def test_import_names_map_to_their_distributions() -> None:
    assert distributions_of("yaml") == {"pyyaml"}
    assert distributions_of("google.protobuf") == {"protobuf"}
    assert distributions_of("opentelemetry.sdk.trace") == {"opentelemetry-sdk"}  # a namespace
    assert "opentelemetry-api" in distributions_of("opentelemetry.trace")
    assert _requirement_name("uvicorn[standard]>=0.50,<0.55") == "uvicorn"


# -- the test suite's own shape ------------------------------------------------------------------

TIERS = ("unit", "service", "system", "training", "bench")


def test_the_shared_test_modules_import_no_benchmark() -> None:
    """conftest.py and helpers.py load for every test: the benchmarks stay out of them."""
    for name in ("conftest.py", "helpers.py"):
        tree = ast.parse((ROOT / "tests" / name).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] == "benchmarks"}, name


def test_every_test_module_lies_in_a_tier() -> None:
    """A test's marker comes from its folder (tests/conftest.py): no test module outside one."""
    loose = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").rglob("test_*.py")
        if p.relative_to(ROOT / "tests").parts[0] not in TIERS and "def test_" in p.read_text()
    ]
    assert loose == []
