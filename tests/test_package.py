"""The package's shape: imports point down the layers, every import resolves, registries stay
import-light, and no function grows past 80 lines nor a command module past 250."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

# lowest first: a module may import its own layer or lower ones, never a higher one
LAYERS = [
    {
        "errors",
        "fileio",
        "reads",
        "lifeline",
        "resources",
        "table",
        "config",
        "hf_fields",
        "sources",
        "version",
        "runtime.registry",
        "export.flavours",
        "export.weight_recipes",
        "export.external",
        "export.io_spec",
    },
    {"hf_gpt2", "hf_llama"},
    {"hf_checkpoint"},
    {"weights", "examples", "text"},
    {"model", "api"},
    {"export"},
    {"workspace"},
    {"runtime", "parallel"},
    {"generation", "generation_rules", "beam_search", "infer"},
    {"measure", "check"},
    {"report"},
    {"workflow"},
    {"cli", "interrupts", "__main__", "__init__"},
]


def layer_of(module: str) -> int:
    """module: dotted name inside the package ('measure.forward'); its most specific layer."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"pipeline.{module} is in no layer: add it to LAYERS")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path):
    """(imported module inside the package, imported names, line) for every import, in functions too."""
    if name == "__init__":  # the package's own front door
        package = []
    else:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("pipeline"):
                target = node.module.removeprefix("pipeline").lstrip(".")
            else:
                continue
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    yield alias.name.removeprefix("pipeline."), [], node.lineno


def test_imports_point_down_the_layers():
    upward = []
    for name, path in modules():
        mine = layer_of(name)
        for target, names, line in imports(name, path):
            # `from . import x` names modules: judge each
            targets = (
                [f"{target}.{n}" if target else n for n in names]
                if target in ("", name)
                else [target]
            )
            for t in targets:
                if (
                    t
                    and (PACKAGE / (t.replace(".", "/") + ".py")).exists()
                    or (PACKAGE / t.replace(".", "/")).is_dir()
                ):
                    if layer_of(t) > mine:
                        upward.append(
                            f"pipeline/{path.relative_to(PACKAGE)}:{line} imports pipeline.{t}"
                        )
    assert not upward, "\n".join(upward)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (in functions too), and those a registry names
    as "pipeline.module:function" strings (imported when the entry is used)."""
    names = dict(modules())
    graph = {}
    for name, path in names.items():
        edges = set()
        for target, imported, _ in imports(name, path):
            submodules = [f"{target}.{n}" if target else n for n in imported]
            edges |= {t for t in submodules if t in names} or {target}
        edges |= set(re.findall(r'"pipeline\.([a-z_.]+):[a-z_]+"', path.read_text()))
        graph[name] = {t for t in edges if t in names and t != name}
    return graph


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle once, as the path from its first module (sorted) back to it."""
    circles = []

    def reaches(start, goal, seen):
        for nxt in sorted(graph.get(start, ())):
            if nxt == goal:
                return [nxt]
            if nxt not in seen:
                seen.add(nxt)
                path = reaches(nxt, goal, seen)
                if path:
                    return [nxt, *path]
        return None

    for name in sorted(graph):
        if any(name in c for c in circles):
            continue
        loop = reaches(name, name, set())
        if loop:
            circles.append([name, *loop])
    return circles


def test_no_import_circles():
    """Not even inside a layer, nor through a registry's string: each module can be read, and
    tested, knowing only what it imports."""
    circles = find_circles(import_graph())
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert find_circles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert find_circles({"a": {"b"}, "b": set()}) == []


def test_every_import_inside_the_package_resolves():
    missing = []
    for name, path in modules():
        for target, names, line in imports(name, path):
            try:
                module = importlib.import_module(f"pipeline.{target}" if target else "pipeline")
            except ImportError as exc:
                missing.append(f"{path}:{line}: {exc}")
                continue
            for n in names:
                if (
                    not hasattr(module, n)
                    and importlib.util.find_spec(f"{module.__name__}.{n}") is None
                ):
                    missing.append(f"{path}:{line}: {module.__name__} has no {n}")
    assert not missing, "\n".join(missing)


def test_registries_and_the_cli_start_without_heavy_imports():
    code = (
        "import sys; import pipeline.runtime.registry, pipeline.export.flavours, pipeline.config, pipeline.cli; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_COMMAND_LINES = 60, 400, 250


def test_no_long_functions_or_modules():
    long = []
    for name, path in modules():
        lines = len(path.read_text().splitlines())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
        limit = MAX_COMMAND_LINES if name.startswith("cli") else MAX_MODULE_LINES
        if lines > limit:
            long.append(f"{path}: {lines} lines")
    assert not long, "\n".join(long)


MAX_RUNTIME_LITERALS = 15  # defaults of the CLI and the API, and package names that read alike


def runtime_literals(source: str) -> list[int]:
    """Lines of string constants that are exactly a runtime's name."""
    from pipeline.runtime.registry import RUNTIMES

    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUNTIMES
    ]


def test_runtimes_are_named_by_the_runtime_package_only():
    """Outside pipeline/runtime/ a runtime is picked by its role in the registry, not by name."""
    found = [
        f"{path}:{line}"
        for name, path in modules()
        if not name.startswith("runtime")
        for line in runtime_literals(path.read_text())
    ]
    assert len(found) <= MAX_RUNTIME_LITERALS, "\n".join(found)


def test_the_literal_finder_finds_names():
    assert runtime_literals('x = "ort-opt"\ny = f(2, "torch")\nz = "ort-opt2"') == [1, 2]


def test_every_role_names_a_runtime():
    from pipeline.runtime.registry import ROLES, RUNTIMES, runtimes_with

    assert all(runtimes_with(role) for role in ROLES)
    assert all(r.roles <= set(ROLES) for r in RUNTIMES.values())


@pytest.mark.parametrize("name", ["registry", "flavours"])
def test_registry_entries_are_complete(name):
    from pipeline.export.flavours import FLAVOURS
    from pipeline.runtime.registry import RUNTIMES

    if name == "flavours":
        assert all(f.suffix.endswith(".onnx") for f in FLAVOURS.values())
        assert len({f.suffix for f in FLAVOURS.values()}) == len(FLAVOURS)
        return
    for runtime in RUNTIMES.values():
        assert runtime.forward or runtime.decoder, runtime.name
        for graph in ("forward", "decoder"):
            if runtime.runs(graph):
                assert callable(runtime.builder(graph)), (runtime.name, graph)
                flavour = runtime.flavour(graph)
                assert flavour is None or flavour in FLAVOURS, (runtime.name, flavour)
        if runtime.step_timer:
            module, _, function = runtime.step_timer.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), runtime.name


def test_ruff_passes():
    """The linter configuration in pyproject.toml holds for the package, the tests and scripts."""
    root = PACKAGE.parent
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pipeline", "tests", "scripts"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
