"""The package's import graph: no two modules import each other, directly or around a loop (function-level and
TYPE_CHECKING imports count: they couple the modules all the same)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the promptrec modules it imports anywhere in its file (`promptrec` itself is the package's API)."""
    modules = {_module(path): path for path in (SRC / "promptrec").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
        while any(t not in modules and "." in t for t in targets):
            targets = {t if t in modules else t.rsplit(".", 1)[0] for t in targets}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"promptrec.splits", "promptrec.llm.probe", "promptrec.methods.lora_template"} <= set(graph)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert order.index("promptrec.data") < order.index("promptrec.splits") < order.index("promptrec.cv")


def test_a_cycle_would_be_found():
    graph = import_graph()
    graph["promptrec.data"].add("promptrec.cv")  # as if data imported cv
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("the planted cycle data -> cv -> ... -> data was not found")


def test_every_promptrec_name_imported_in_src_bench_and_tests_exists():
    # imports inside functions run only when a bench or code path does: a renamed function broke
    # `bench evidence_cv` silently (it imported promptrec.methods.bank.default_cache_dir, since gone)
    import importlib.util

    root = SRC.parent
    missing = []
    for path in [*(SRC / "promptrec").rglob("*.py"), *(root / "bench").glob("*.py"), *(root / "tests").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "promptrec":
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert not missing
