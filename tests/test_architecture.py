"""The package's shape, checked: no import cycles, one-way arrows (cli -> tasks -> core), small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medseg_attn"
TASKS = ("segmentation", "classification")
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(top_level_only: bool = False) -> dict[str, set[str]]:
    """Every medseg_attn module -> the medseg_attn modules it imports: at any depth of its code, or with
    ``top_level_only`` only those executed when the module is imported (its body)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in tree.body if top_level_only else ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            # a package's own __init__ re-exporting its modules is not a cycle through the package
            if node.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walker_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package():
    assert _find_cycle(_imports()) is None, f"import cycle: {' -> '.join(_find_cycle(_imports()))}"
    assert _find_cycle(_imports(top_level_only=True)) is None


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*TASKS, "cli") else "core"


def test_arrows_point_one_way_cli_to_tasks_to_core():
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            source_layer, target_layer = _layer(module), _layer(target)
            if target_layer == "cli" and source_layer != "cli":
                wrong.append(f"{module} imports the cli ({target})")
            elif source_layer == "core" and target_layer in TASKS:
                wrong.append(f"core module {module} imports task module {target}")
            elif source_layer in TASKS and target_layer in TASKS and source_layer != target_layer:
                wrong.append(f"task module {module} imports the other task's {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_over_the_line_limit():
    long = {str(path.relative_to(PACKAGE.parent)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_shadows_a_standard_library_name():
    import sys

    names = {path.stem for path in PACKAGE.rglob("*.py")} | {path.name for path in PACKAGE.rglob("*") if path.is_dir()}
    shadowing = sorted(names & set(sys.stdlib_module_names) - {"io"})  # medseg_attn.io is only ever imported qualified
    assert not shadowing, f"modules named like standard-library modules: {shadowing}"


def test_exactly_one_main_in_the_package():
    mains = [str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
             for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert mains == ["medseg_attn/cli/app.py"]
