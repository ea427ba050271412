"""The package's shape, read from its source: layers, imports only downward, module headers.

A module may import qa_lib modules of lower layers only, at the top of the file (imports inside
functions are for optional third-party packages), and never a ``_private`` name of another file.
Reading order equals import order: the layers below are the order in which the course meets them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qa_lib"
LAYERS = (
    ("errors",),  # support
    ("config", "files", "runtime", "distributed"),
    ("data", "hub", "packed", "row_grad", "checkpoint", "batching", "losses", "question_flag")
    + ("bm25", "optim"),
    ("inference", "saving", "metrics", "trec"),  # the parts of a model and of its measurement
    ("encoders", "hybrid", "gradcache", "negatives"),
    ("evaluate", "step", "export", "index"),
    ("train",),
    ("experiments", "reporting", "plotting", "diagrams"),
    ("cli", "course", "explore"),
)
ENTRY_POINTS = ("__init__", "__main__")  # they sit above every layer
LAYER_OF = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _qa_lib_imports(tree: ast.Module):
    """``(qa_lib module, imported names, line, at top level)`` for each import of qa_lib."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qa_lib"):
            parts = node.module.split(".")
            if len(parts) == 1:  # from qa_lib import x: x is a module
                for alias in node.names:
                    yield alias.name, [], node.lineno, id(node) in top
            else:
                yield parts[1], [a.name for a in node.names], node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qa_lib."):
                    yield alias.name.split(".")[1], [], node.lineno, id(node) in top


def test_every_module_has_a_layer():
    modules = set(_modules()) - set(ENTRY_POINTS)
    assert modules == set(LAYER_OF), "add new modules to LAYERS (and the README's layer list)"


@pytest.mark.parametrize("name", sorted(LAYER_OF))
def test_imports_go_down_only_at_the_top_and_never_private(name):
    tree = _modules()[name]
    for target, names, line, at_top in _qa_lib_imports(tree):
        where = f"qa_lib/{name}.py:{line}"
        assert at_top, f"{where}: imports qa_lib.{target} inside a function"
        assert LAYER_OF[target] < LAYER_OF[name], (
            f"{where}: {name} (layer {LAYER_OF[name]}) imports {target} (layer "
            f"{LAYER_OF[target]}): imports must go to lower layers only"
        )
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{where}: imports private {private} from qa_lib.{target}"


def test_the_layers_have_no_circles():
    """Downward imports cannot form a circle; this checks the graph itself, to be sure."""
    graph = {n: {t for t, *_ in _qa_lib_imports(tree)} for n, tree in _modules().items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != "open", f"import circle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("name", sorted(LAYER_OF))
def test_each_module_says_which_notebook_teaches_it(name):
    first_line = (ast.get_docstring(_modules()[name]) or "").splitlines()[0]
    assert "notebook" in first_line or "README" in first_line, f"qa_lib/{name}.py: {first_line}"


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                if lines > 60:
                    long.append(f"qa_lib/{name}.py:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_checker_catches_a_violation(tmp_path):
    """The rules above can fail: a function-level upward import is reported."""
    tree = ast.parse("def f():\n    from qa_lib.cli import main\n")
    found = list(_qa_lib_imports(tree))
    assert found == [("cli", ["main"], 2, False)]
