"""The layers of DESIGN.md hold: imports point down (studio -> pipelines, store -> common), no
module imports itself back through others, only store/ writes the store and studio/ runs no SQL
at all (it asks store/), and no function in studio/ is longer than a screen."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"common": set(), "store": {"common"}, "pipelines": {"common"}, "studio": {"common", "store", "pipelines"}}


def submodule_or_module(module: str, name: str) -> str:
    """What `from module import name` imports: the submodule module.name where there is one."""
    folder = ROOT.joinpath(*module.split("."))
    return f"{module}.{name}" if (folder / f"{name}.py").is_file() or (folder / name).is_dir() else module


def our_imports() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (anywhere in it, functions included)."""
    graph = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [submodule_or_module(node.module, a.name) for a in node.names] \
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                found |= {n for n in names if n.split(".")[0] in LAYERS}
            graph[module] = found
    return graph


def test_imports_point_down_only():
    for module, imported in our_imports().items():
        layer = module.split(".")[0]
        for name in imported:
            assert name.split(".")[0] in LAYERS[layer] | {layer}, f"{module} imports {name}"


def test_no_import_circle():
    imports = our_imports()
    graph = {m: {i for i in imported if i in imports} for m, imported in imports.items()}

    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, f"import circles through {circles}"


def test_only_the_store_writes_sql():
    for path in [*(ROOT / "studio").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]:
        writes = re.findall(r"\b(INSERT|UPDATE|DELETE)\b", path.read_text())
        assert not writes, f"{path.name} writes the store itself ({', '.join(sorted(set(writes)))})"


def test_the_studio_runs_no_sql():
    """Every read of the store from studio/ goes through a function of store/: no query, no scalar,
    no execute, no SQL text."""
    for path in (ROOT / "studio").rglob("*.py"):
        text = path.read_text()
        calls = re.findall(r"\.(query|scalar|execute|sql)\(", text)
        sql = re.findall(r"\bSELECT\b|\bFROM [a-z_]+ WHERE\b", text)
        found = ", ".join(sorted(set(calls + sql)))
        assert not calls and not sql, f"{path.relative_to(ROOT)} runs SQL itself ({found})"


def test_no_function_in_the_studio_is_over_80_lines():
    long = []
    for path in (ROOT / "studio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"functions over 80 lines: {long}"
