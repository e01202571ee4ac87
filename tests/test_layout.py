"""The package's shape, checked from its source: imports form no cycle, the
core imports nothing that does I/O, no module reaches into another's
private names, and a long module says at its top why it is long."""
import ast
import os
import sys

import pytest

from tests.support import REPO

PACKAGE = os.path.join(REPO, "raftfast")
# What the sans-IO core may import besides itself: no clock, no sockets, no
# files, no threads, no event loop.
CORE_MAY_IMPORT = {"collections", "random", "dataclasses", "enum", "typing", "__future__",
                   "struct", "itertools", "functools", "heapq", "bisect", "math"}
LONG_MODULE_LINES = 500
REASON_MARK = "Why it is long:"


def module_name(path):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def package_modules():
    mods = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                mods[module_name(path)] = path
    return mods


def imports_of(name, path):
    """(module imported, names taken from it) for every import in the file,
    at any depth (a lazy import inside a function still ties two modules)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                target = parent + ("." + node.module if node.module else "")
            else:
                target = node.module
            out.append((target, tuple(a.name for a in node.names)))
    return out


def graph():
    mods = package_modules()
    edges = {m: set() for m in mods}
    taken = []
    for m, path in mods.items():
        for target, names in imports_of(m, path):
            for n in names:  # `from raftfast.x import y` may name module x.y
                if f"{target}.{n}" in mods:
                    edges[m].add(f"{target}.{n}")
            if target in mods:
                edges[m].add(target)
                taken.append((m, target, names))
    return mods, edges, taken


def test_imports_form_no_cycle():
    _, edges, _ = graph()
    # Tarjan's strongly connected components, iteratively small enough here.
    index, low, stack, on, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    # A package's __init__ importing its own modules is how packages export.
    cycles = [c for c in cycles
              if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert cycles == []


def test_the_core_imports_nothing_with_io():
    mods = package_modules()
    bad = []
    for m, path in mods.items():
        if not m.startswith("raftfast.core"):
            continue
        for target, _ in imports_of(m, path):
            top = target.split(".")[0]
            if target.startswith("raftfast.core") or top in CORE_MAY_IMPORT:
                continue
            bad.append(f"{m} imports {target}")
    assert bad == []


def test_no_module_takes_another_modules_private_names():
    mods, _, taken = graph()
    bad = [f"{m} takes {n} from {target}"
           for m, target, names in taken for n in names
           if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in mods
           and target != m]
    assert bad == []


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_a_long_module_says_why(name):
    path = package_modules()[name]
    lines = open(path).read().count("\n")
    if lines <= LONG_MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    assert REASON_MARK in doc, (
        f"{name} has {lines} lines; split it, or say at its top why it is long "
        f"(a paragraph starting {REASON_MARK!r})")
