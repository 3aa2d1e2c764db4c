"""The layout of the code: one home per concern, visible in the imports. No import cycle among the
kit's modules; library modules never import a command-line script; models import no data code;
no module past 600 lines, no function past a screen (60 lines), every module saying what it is
for; train.py a loop under 500 lines."""
import ast
import glob
import os

import pytest
from conftest import ROOT

SCRIPTS = {"prepare_data", "train", "evaluate", "curves", "runs", "compare", "robustness", "explain", "average"}  # CLIs


def modules():
    """{name: path} of every module of the kit (top level, models/, benchmarks/)."""
    paths = [*glob.glob(os.path.join(ROOT, "*.py")), *glob.glob(os.path.join(ROOT, "models", "*.py")),
             *glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))]
    return {os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."): path for path in paths}


def imports_of(path, known):
    """The kit's modules that path imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] + [f"{node.module}.{alias.name}" for alias in node.names] if isinstance(node, ast.ImportFrom) and node.module else []
        found |= {name for name in names if name in known}
    return found


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_no_module_imports_itself_back_through_others(graph):
    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for module in graph[todo.pop()]:
                if module not in seen:
                    seen.add(module)
                    todo.append(module)
        return seen

    assert [name for name in graph if name in reachable(name)] == []


def test_library_modules_import_no_command_line_script(graph):
    libraries = {name for name in graph if name not in SCRIPTS and not name.startswith("benchmarks.")}
    assert {name: sorted(graph[name] & SCRIPTS) for name in libraries if graph[name] & SCRIPTS} == {}
    assert "data" not in graph["model"] and not any("data" in graph[name] for name in graph if name.startswith("models."))
    assert "train" not in graph["compare"]


def test_modules_and_functions_fit_a_reader(graph):
    known = modules()
    too_long = {name: len(open(path).read().splitlines()) for name, path in known.items()}
    assert {name: lines for name, lines in too_long.items() if lines > 600} == {}
    assert too_long["train"] < 500
    functions = {}
    for name, path in known.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        assert ast.get_docstring(tree), f"{name} does not say what it is for"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                functions[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert functions == {}
