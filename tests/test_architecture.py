"""The package's shape, checked: no import cycles, one-way arrows (cli -> tasks -> core), small modules."""

from __future__ import annotations

import ast
import re
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


REGISTRY = "medseg_attn.registry"  # THE list of tasks: between the CLI and the tasks


def _layer(module: str) -> str:
    parts = module.split(".")
    if module == REGISTRY:
        return "registry"
    return parts[1] if len(parts) > 1 and parts[1] in (*TASKS, "cli") else "core"


def test_arrows_point_one_way_cli_to_tasks_to_core():
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            source_layer, target_layer = _layer(module), _layer(target)
            if target_layer == "cli" and source_layer != "cli":
                wrong.append(f"{module} imports the cli ({target})")
            elif target_layer == "registry" and source_layer != "cli":
                wrong.append(f"{module} imports the task registry (only the cli may)")
            elif source_layer == "core" and target_layer in TASKS:
                wrong.append(f"core module {module} imports task module {target}")
            elif source_layer in TASKS and target_layer in TASKS and source_layer != target_layer:
                wrong.append(f"task module {module} imports the other task's {target}")
    assert not wrong, "\n".join(sorted(wrong))


# Layers inside segmentation/ (issue 33): each sub-package (or top-level module) may import only from layers below
# its own, or from inside itself; siblings of one level never import each other. Imports inside functions count.
SEGMENTATION_LAYERS = {
    "measures": 0,  # Dice and surface primitives, connected components and postprocessing rules, statistics
    "data": 1,  # datasets, folds, planning, the cache, preprocessing, the training fingerprint
    "model": 2,  # the model: its folder layout and loading, and the top-level task.py and losses.py
    "inference": 3,  # the predictor, sliding window, resampling, member agreement, the ONNX network
    "evaluation": 4, "qc": 4, "outputs": 4,  # siblings: metrics, review, writers
    "workflows": 5, "export": 5,  # predict batch, train, CV, fine-tune, stress, demo; export
    "": 6,  # medseg_attn.segmentation itself (its public names)
}


def _segmentation_part(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["medseg_attn", "segmentation"]:
        return None
    part = parts[2] if len(parts) > 2 else ""
    return "model" if part in ("task", "losses") else part


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        source = _segmentation_part(module)
        if source is None:
            continue
        assert source in SEGMENTATION_LAYERS, f"{module}: its sub-package {source!r} has no layer in the table"
        for target in targets:
            part = _segmentation_part(target)
            if part is None or part == source:
                continue
            if SEGMENTATION_LAYERS[part] >= SEGMENTATION_LAYERS[source]:
                wrong.append(f"{module} ({source}, layer {SEGMENTATION_LAYERS[source]}) imports {target} "
                             f"({part}, layer {SEGMENTATION_LAYERS[part]})")
    return sorted(wrong)


def test_the_layer_check_finds_a_planted_upward_import():
    planted = {"medseg_attn.segmentation.data.x": {"medseg_attn.segmentation.inference.y"},
               "medseg_attn.segmentation.qc.a": {"medseg_attn.segmentation.evaluation.b"},
               "medseg_attn.segmentation.workflows.c": {"medseg_attn.segmentation.data.x"}}
    assert len(_layer_violations(planted)) == 2


def test_segmentation_imports_follow_the_layers():
    """measures < data < model < inference < evaluation | qc | outputs < workflows | export, imports inside
    functions included (``_imports()`` walks the whole module)."""
    wrong = _layer_violations(_imports())
    assert not wrong, "imports against the layers of medseg_attn/segmentation:\n" + "\n".join(wrong)


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


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def test_every_module_is_named_in_docs_architecture():
    """A module added without a line in docs/architecture.md's tree fails here (path relative to the package,
    e.g. ``segmentation/workflows/batch.py``; package __init__ files and resources excepted)."""
    text = ARCHITECTURE.read_text()
    modules = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                     if path.name not in ("__init__.py", "__main__.py") and "resources" not in path.parts)
    missing = [name for name in modules if name not in text]
    assert not missing, f"modules missing from docs/architecture.md: {missing}"


# Where a file's format is decided from its name: only io/suffixes.py may hold suffix literals.
SUFFIX_TABLE = "io/suffixes.py"
SUFFIX_LITERALS = {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".tif",
                   ".tiff", ".bmp"}


def _suffix_tables() -> dict[str, list[str]]:
    """Modules holding a tuple/list/set/dict of two or more file-suffix literals: a reader-selection table."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
                node.keys if isinstance(node, ast.Dict) else []
            values = [e.value.lower() for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len([v for v in values if v in SUFFIX_LITERALS]) >= 2:
                found.setdefault(str(path.relative_to(PACKAGE)), []).append(", ".join(values))
    return found


def test_one_reader_selection_table():
    tables = {module: rows for module, rows in _suffix_tables().items() if module != SUFFIX_TABLE}
    assert SUFFIX_TABLE in _suffix_tables(), "io/suffixes.py no longer holds the suffix table"
    assert not tables, f"a second table of file suffixes (take them from io/suffixes.py): {tables}"


# A task's name, or the dotted name of one of its modules (what importlib would load)
TASK_REFERENCE = re.compile(rf"({'|'.join(TASKS)})|medseg_attn\.({'|'.join(TASKS)})(\.\w+)*")


def test_no_core_module_names_a_task():
    """The core knows tasks only through medseg_attn.task.Task values handed to it (issue 25, item 2): no core
    string is a task's name or a task module's dotted name (the registry, not core, lists the tasks)."""
    naming = set()
    for path in PACKAGE.rglob("*.py"):
        if _layer(_module_name(path)) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and TASK_REFERENCE.fullmatch(node.value):
                naming.add(str(path.relative_to(PACKAGE)))
    assert not naming, f"core modules naming a task: {sorted(naming)}"


def test_the_cli_predict_only_parses_calls_and_prints():
    """Issue 33: the CLI's predict is parse, options, ``predict_batch``, print (15 lines at most), and ``args`` never
    travels further (the workflow takes a frozen PredictOptions)."""
    tree = ast.parse((PACKAGE / "cli" / "segmentation.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_run_predict")
    assert function.end_lineno - function.lineno + 1 <= 15
    passed = [node for node in ast.walk(function) if isinstance(node, ast.Call)
              and not (isinstance(node.func, ast.Name) and node.func.id == "getattr")  # reading an option
              for value in [*node.args, *(keyword.value for keyword in node.keywords)]
              if isinstance(value, ast.Name) and value.id == "args"]
    assert not passed, "args passed on whole from the CLI's predict"
