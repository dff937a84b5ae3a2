"""The package's floor plan: imports run downward only, no import cycle, no private name crosses a module, and no
class is over ``MAX_CLASS_LINES`` lines (a class that grows past it holds more than one concept: move one out).

The layers, lowest first (docs/method.md, "Where each step lives"). A module may import its own subpackage and
any lower layer, never a layer of its own rank or above; the order is also what each subpackage's docstring says.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    ("core",),
    ("data", "models", "metrics"),
    ("scoring", "pruning", "localize"),
    ("answers", "stats"),
    ("pipeline",),
    ("datamodules", "callbacks"),
    ("report",),
    ("study",),
    ("plant",),
    ("cli",),
]
RANK = {pkg: r for r, names in enumerate(LAYERS) for pkg in names}
MAX_CLASS_LINES = 250
# Top-level modules that are not subpackages: the package itself, a contract's address, the entry point.
TOP_MODULES = {"biasprune": -1, "biasprune.parsing": RANK["answers"] + 0.5, "biasprune.__main__": RANK["cli"] + 1}


def _files() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "biasprune").rglob("*.py")):
        rel = path.relative_to(ROOT / "biasprune").with_suffix("")
        parts = ["biasprune", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    for top in ("datamodules", "callbacks"):
        for path in sorted((ROOT / top).glob("*.py")):
            name = "biasprune." + top + ("" if path.stem == "__init__" else "." + path.stem)
            out[name] = path
    return out


FILES = _files()


def _layer(module: str) -> tuple[str, int]:
    if module in TOP_MODULES:
        return module, TOP_MODULES[module]
    pkg = module.split(".")[1]
    if pkg not in RANK:
        raise AssertionError(f"{module}: biasprune.{pkg} is in no layer of tests/test_layout.py")
    return pkg, RANK[pkg]


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of a biasprune module, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("biasprune")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("biasprune"):
                continue
            names = [a.name for a in node.names]
            # ``from pkg import submodule`` imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in FILES]
            if subs:
                out += [(s, [], node.lineno) for s in subs]
                names = [n for n in names if f"{target}.{n}" not in FILES]
            if names or not subs:
                out.append((target, names, node.lineno))
    return out


GRAPH = {m: _imports(m, p) for m, p in FILES.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in FILES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(FILES))
def test_imports_run_downward(module: str) -> None:
    pkg, rank = _layer(module)
    bad = []
    for target, _, line in GRAPH[module]:
        if target == "biasprune":
            continue
        tpkg, trank = _layer(target)
        if tpkg == pkg:
            continue
        if trank >= rank:
            bad.append(f"line {line}: {target} (layer {tpkg}, rank {trank}) from {pkg} (rank {rank})")
    assert not bad, f"{module} imports sideways or upward:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_private_name_crosses_a_module(module: str) -> None:
    bad = [f"line {line}: {n} from {t}" for t, names, line in GRAPH[module] for n in names
           if n.startswith("_") and not n.startswith("__") and t != module]
    assert not bad, f"{module} imports private names:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    edges = {m: {t if t in FILES else t.rpartition(".")[0] for t, _, _ in GRAPH[m]} & set(FILES) - {m} for m in FILES}
    # a package's __init__ that only documents (imports nothing) is no node of a cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue  # a package and its own modules: Python resolves these without a cycle in the sense of an arrow
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(FILES):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("pkg", sorted({p for names in LAYERS for p in names} - {"datamodules", "callbacks"}))
def test_each_subpackage_says_what_it_owns_and_may_import(pkg: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "biasprune" / pkg / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "May import" in doc, f"biasprune/{pkg}/__init__.py: its docstring should say what it may import"


def class_lengths(source: str) -> dict[str, int]:
    """Lines of every class of ``source`` (nested ones by dotted name), from its ``class`` line (decorators not
    counted) to its last line: ``end_lineno - lineno + 1``."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.ClassDef):
                name = prefix + child.name
                out[name] = child.end_lineno - child.lineno + 1
                name += "."
            visit(child, name)

    visit(ast.parse(source), "")
    return out


def test_class_lengths_are_measured() -> None:
    source = "@dataclass\nclass A:\n    x = 1\n\n    class B:\n        y = 2\n\n\ndef f():\n    class C:\n        pass\n"
    assert class_lengths(source) == {"A": 5, "A.B": 2, "C": 2}


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_class_is_over_the_limit(module: str) -> None:
    long = {name: n for name, n in class_lengths(FILES[module].read_text(encoding="utf-8")).items() if n > MAX_CLASS_LINES}
    assert not long, f"{FILES[module]}: class(es) over {MAX_CLASS_LINES} lines: {long}; move a concept out"


def test_every_subpackage_is_packaged() -> None:
    """A wheel ships exactly the packages pyproject.toml lists: a new subpackage missing there would import in an
    editable checkout and fail after ``pip install .``."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"biasprune"} | {
        "biasprune." + ".".join(p.parent.relative_to(ROOT / "biasprune").parts)
        for p in (ROOT / "biasprune").rglob("__init__.py")
        if "resources" not in p.parts and p.parent != ROOT / "biasprune"
    }
    found |= {"biasprune.datamodules", "biasprune.callbacks"}
    assert found <= listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"
