"""The package's layers, and a check that every import in fgcli/ goes downward (or sideways without a cycle).

This table is the one place the layer order is written (README "How the code is laid out" refers to it).
A module may import modules of its own layer or of lower layers, never of a higher one; imports under
`if TYPE_CHECKING:` count for the layer rule but not for cycles (they never run).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fgcli"

#: lowest first; a module belongs to the layer of its longest matching prefix (`*` matches one name)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("fgcli", "fgcli.errors", "fgcli.io", "fgcli.console", "fgcli.device", "fgcli.cpu", "fgcli.memory",
              "fgcli.modelinfo", "fgcli.options")),  # options: every task's options dataclass
    # each method's config section (and its default search space) lives in its folder; the built-in methods'
    # list (fgcli/methods/builtin.py) is read by the config to find them
    ("config", ("fgcli.config", "fgcli.searchspace", "fgcli.methods.*.config", "fgcli.methods.builtin")),
    ("data and backbones", ("fgcli.data", "fgcli.backbones", "fgcli.pretrained")),
    ("methods", ("fgcli.methods",)),
    ("engine", ("fgcli.engine",)),
    ("inference", ("fgcli.inference", "fgcli.timing", "fgcli.parity")),
    # the format registry: one entry per model format (suffixes, writer, predictor, tolerance)
    ("formats", ("fgcli.formats",)),
    # a method's viz panels live in its folder but belong to the viz layer
    ("tasks", ("fgcli.tasks", "fgcli.distilling", "fgcli.viz", "fgcli.methods.*.viz")),
    ("tune", ("fgcli.tuning",)),  # searches drive the engine and confirm on test with the evaluation task
    ("api", ("fgcli.api",)),
    ("commands", ("fgcli.commands",)),
    ("cli", ("fgcli.cli", "fgcli.__main__")),
]

#: the only imports allowed against the order: `fgcli/__init__.py` re-exports the Python API lazily (the import
#: runs on first attribute access, so `import fgcli` stays light and nothing below the API sees it)
ALLOWED = {("fgcli", "fgcli.api")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = (fnmatch.fnmatchcase(module, prefix) if "*" in prefix
                       else module == prefix or (prefix != "fgcli" and module.startswith(prefix + ".")))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def imports_of(path: Path, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported fgcli module, line, runs at run time) for every fgcli import in `path` (or `source`)."""
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    typing_only = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            # `from fgcli.engine import checkpoint` imports the submodule fgcli.engine.checkpoint
            names = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        else:
            continue
        for name in names:
            if name == "fgcli" or name.startswith("fgcli."):
                found.append((name, node.lineno, id(node) not in typing_only))
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = [module_name(p) for p in all_modules() if layer_of(module_name(p)) < 0]
    assert not missing, f"modules in no layer of tests/test_layers.py LAYERS: {missing}; add them there"


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    """One message per import in `path` that goes to a higher layer, naming the file, the line and the rule."""
    module = module_name(path)
    own = layer_of(module)
    problems = []
    for target, line, _ in sorted(set(imports_of(path, source)), key=lambda t: (t[1], t[0])):
        theirs = layer_of(target)
        if theirs > own and (module, target) not in ALLOWED:
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} (layer '{LAYERS[own][0]}') "
                            f"imports {target} (layer '{LAYERS[theirs][0]}'): a layer may only import its own "
                            "or lower layers (tests/test_layers.py LAYERS)")
    return problems


def test_imports_only_go_downward() -> None:
    problems = [message for path in all_modules() for message in upward_imports(path)]
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in all_modules():
        module = module_name(path)
        graph[module] = {t for t, _, runtime in imports_of(path)
                         if runtime and t != module and t in _names() and (module, t) not in ALLOWED}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (each module imports the next):\n" + "\n".join(" -> ".join(c) for c in cycles)


def _names() -> set[str]:
    return {module_name(p) for p in all_modules()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_an_upward_import_is_reported_with_the_file_and_the_rule() -> None:
    probe = PACKAGE / "engine" / "_probe.py"  # not written: the source is given
    source = "import torch\n\n\ndef f():\n    from fgcli.commands.train import train_command\n"
    assert upward_imports(probe, source) == [
        "fgcli/engine/_probe.py:5: fgcli.engine._probe (layer 'engine') imports fgcli.commands.train (layer "
        "'commands'): a layer may only import its own or lower layers (tests/test_layers.py LAYERS)"]
    assert upward_imports(probe, "from fgcli.methods import build_method\nfrom . import checkpoint\n") == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
