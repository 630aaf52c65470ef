"""The layers of DESIGN.md hold: imports point down (studio -> pipelines, store -> common), no
module imports itself back through others, and only store/ writes the store."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"common": set(), "store": {"common"}, "pipelines": {"common"}, "studio": {"common", "store", "pipelines"}}


def our_imports() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (anywhere in it, functions included)."""
    graph = {}
    for package in LAYERS:
        for path in (ROOT / package).glob("*.py"):
            module = f"{package}.{path.stem}"
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
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
    for path in [*(ROOT / "studio").glob("*.py"), *(ROOT / "pipelines").glob("*.py")]:
        writes = re.findall(r"\b(INSERT|UPDATE|DELETE)\b", path.read_text())
        assert not writes, f"{path.name} writes the store itself ({', '.join(sorted(set(writes)))})"
