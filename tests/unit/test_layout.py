"""The house rules, read from the code's own imports (docs/architecture.md, "Layout"):

- common/ is the library: it imports nothing from services/ or dyref/;
- each service under services/<name>/ imports common/ and itself, never another service or dyref/;
- dyref/ (the command line, launcher, demo, chaos) may import anything, and nothing imports it;
- no import cycles between first-party modules.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "services", "dyref")


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports (``from a.b import c`` counts a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports (a package's own parents left out:
    importing a submodule runs its package's __init__, which is not a dependency on purpose)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for target in _imports(path):
            r = resolve(target)
            if r and r != name and not name.startswith(r + "."):
                graph[name].add(r)
        graph.setdefault(name, set())
    return dict(graph)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in graph.items():
        top = src.split(".")[0]
        for dst in sorted(targets):
            dtop = dst.split(".")[0]
            if top == "common" and dtop != "common":
                out.append(f"{src} -> {dst}: the library imports only itself")
            elif top == "services":
                own = src.split(".")[:2]
                if dtop == "dyref":
                    out.append(f"{src} -> {dst}: a service never imports the application")
                elif dtop == "services" and dst.split(".")[:2] != own and dst != "services":
                    out.append(f"{src} -> {dst}: a service imports common/, never another service")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_each_layer_imports_only_what_it_may():
    assert layer_violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_application_is_imported_by_nobody():
    graph = import_graph()
    users = sorted(src for src, t in graph.items() if not src.startswith("dyref") and any(d.startswith("dyref") for d in t))
    assert users == []


# ---- the checks themselves, on a small tree written here -------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for top in PACKAGES:
        (tmp_path / top).mkdir(exist_ok=True)
    return tmp_path


def test_the_rules_catch_a_service_importing_another_a_library_importing_up_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "common/__init__.py": "",
        "common/a.py": "def f():\n    from services.gen.worker import x\n",          # lazy, still counted
        "common/b.py": "import common.c\n",
        "common/c.py": "from common import b\n",                                       # b <-> c
        "services/__init__.py": "",
        "services/gen/__init__.py": "",
        "services/gen/worker.py": "from services.learner.recipe import q\nfrom common.a import f\n",
        "services/learner/__init__.py": "",
        "services/learner/recipe.py": "from services.learner import helpers\nfrom dyref.cli import app\n",
        "services/learner/helpers.py": "import json\n",
        "dyref/__init__.py": "",
        "dyref/cli.py": "from services.gen.worker import x\nfrom common.a import f\n",
    })
    graph = import_graph(root)
    assert graph["common.c"] == {"common.b"} and graph["services.learner.recipe"] == {"services.learner.helpers",
                                                                                    "dyref.cli"}
    assert sorted(layer_violations(graph)) == [
        "common.a -> services.gen.worker: the library imports only itself",
        "services.gen.worker -> services.learner.recipe: a service imports common/, never another service",
        "services.learner.recipe -> dyref.cli: a service never imports the application",
    ]
    assert sorted(cycles(graph)) == [["common.a", "dyref.cli", "services.gen.worker", "services.learner.recipe"],
                                     ["common.b", "common.c"]]


@pytest.mark.parametrize("text", ["from services.gen import worker\n", "import services.gen.worker as w\n"])
def test_both_import_forms_are_read(tmp_path, text):
    root = _tree(tmp_path, {"services/__init__.py": "", "services/gen/__init__.py": "", "services/gen/worker.py": "",
                            "services/other/__init__.py": "", "services/other/m.py": text})
    found = layer_violations(import_graph(root))
    assert "services.other.m -> services.gen.worker: a service imports common/, never another service" in found
    assert all(v.startswith("services.other.m -> services.gen") for v in found)
