"""The project's import graph: no cycles, and every import goes down the layers.

Read from the source (every `import`, at module level or inside a function: a function-level import
is a dependency too, only a later one), so the check needs nothing installed and sees what a reader sees.
A new module must be given a layer here: an unplaced one fails the test, which is the point.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("saferl", "rewards", "rollout")

# Lowest first. A group is a package (`saferl.data` with everything under it) or a module. Entry points
# (`saferl.train` and every `__main__`) sit above all: they may import anything and nothing imports them.
LAYERS: list[set[str]] = [
    {"saferl", "saferl.resources"},
    {"saferl.config_schema", "saferl.experiments", "saferl.policies"},
    {"saferl.files", "saferl.verl_internals", "saferl.verl_plugin", "saferl.ray_cluster", "saferl.models"},
    {"saferl.console"},  # stdlib only: what the console shows of a run
    {"saferl.data", "saferl.launch"},
    {"rewards"},
    {"rollout", "saferl.metrics", "saferl.cpu_platform"},
    {"saferl.preflight", "saferl.resume", "saferl.replay_buffer", "saferl.learning"},
    {"saferl.warm_start", "saferl.eval", "saferl.generate", "saferl.run_summary"},
    {"saferl.srpo"},
    {"saferl.stages"},
]
ENTRY = "entry"
SUBPACKAGE_GROUPS = {"saferl.data", "saferl.models", "saferl.eval", "saferl.srpo", "saferl.warm_start"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path], tree: ast.AST | None = None) -> set[str]:
    """The project modules `name` imports, anywhere in its file (or in `tree`, a part of it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text()) if tree is None else tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for target in candidates:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def group(name: str) -> str:
    if name == "saferl.train" or name.endswith(".__main__"):
        return ENTRY
    parts = name.split(".")
    if parts[0] != "saferl":
        return parts[0]
    head = ".".join(parts[:2])
    return head if head in SUBPACKAGE_GROUPS else name


def layer_of(group_name: str) -> int:
    if group_name == ENTRY:
        return len(LAYERS)
    for index, groups in enumerate(LAYERS):
        if group_name in groups:
            return index
    raise AssertionError(f"{group_name} has no layer in tests/test_layering.py: give it one")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_down_the_layers() -> None:
    upward = []
    for name, targets in graph().items():
        source = group(name)
        for target in targets:
            if group(target) == source:
                continue
            if layer_of(group(target)) >= layer_of(source):
                upward.append(
                    f"{name} -> {target} ({source} layer {layer_of(source)}, {group(target)} layer "
                    f"{layer_of(group(target))})"
                )
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_check_sees_imports() -> None:
    """The graph is not empty by accident: the trainer imports its stages, a function-level import
    counts, and a relative import resolves."""
    edges = graph()
    assert "saferl.stages" in edges["saferl.train"]
    assert "saferl.warm_start" in edges["saferl.stages"]  # imported inside warm_start_stage
    assert "saferl.data.dataset" in edges["saferl.data.prompts"]  # `from .dataset import ...`


# The project imports that stay inside functions, each for a reason its code states: verl must not be
# imported before the platform's environment is set (stages, preflight), a module verl's plugin loader
# imports must not import verl back (the HF replica), and a judge's optional dependencies load only
# when a run names that judge. Everything else is imported at the top, so a module's header says what
# it depends on.
FUNCTION_LEVEL = {
    ("saferl.stages", "saferl.warm_start"),
    ("saferl.stages", "saferl.srpo.stage"),
    ("saferl.preflight", "rollout.reflect_loop"),
    ("rollout.hf_replica", "rollout.hf_server"),
    ("rewards.judges", "rewards.judges.rule"),
    ("rewards.judges", "rewards.judges.openai"),
    ("rewards.judges", "rewards.judges.hf"),
}


def test_project_imports_sit_at_the_top_of_their_module() -> None:
    known = modules()
    found = set()
    for name, path in known.items():
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                found |= {(name, target) for target in imports(name, path, known, func)}
    assert found == FUNCTION_LEVEL, (
        f"new: {sorted(found - FUNCTION_LEVEL)}; gone: {sorted(FUNCTION_LEVEL - found)}"
    )
