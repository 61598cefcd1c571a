"""The layering rule of ARCHITECTURE.md, read from every module's imports with `ast`.

shared layer  ←  stages  ←  pipelines (loop, quickstart)  ←  entry points (the CLI, the package)

A stage imports the shared layer and its own package, never another stage, except the public loaders of
what another stage saved (ALLOWED). A new stage→stage import fails here: move the shared code down into
the shared layer instead, or, if it really is a loader of a saved artefact, add it to ALLOWED.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import rlhfkit

SRC = Path(rlhfkit.__file__).parent

# Top-level modules and packages of src/rlhfkit/, by layer. Every one must be listed.
SHARED = {"assets", "config", "data", "generation", "judging", "models", "ops", "scores", "scoring", "training"}
STAGES = {
    "control",
    "distill",
    "dpo",
    "evaluation",
    "feedback",
    "labeling",
    "offline",
    "ppo",
    "pretrain",
    "reward",
    "rlaif",
    "sft",
}
# run stages one after another through their public entry points; `tutorials` reuse a stage's pure maths
PIPELINES = {"loop", "quickstart", "tutorials"}
ENTRY = {"__init__", "__main__", "cli"}

# (importing stage, imported module): the names it may import. Each is a public loader of a saved artefact.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("control", "rlhfkit.feedback.queue"): {"HumanLabelSettings", "Payload", "request_judgments"},
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. rlhfkit.ppo.train
    path: Path
    line: int
    module: str  # imported module, e.g. rlhfkit.models.reward_ensemble
    name: str | None  # the name imported from it (None for `import module`)
    typing_only: bool = False  # under `if TYPE_CHECKING:`

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    """The top-level part of rlhfkit a module belongs to: rlhfkit.ppo.train -> ppo, rlhfkit -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def typing_only_nodes(tree: ast.AST) -> set[ast.AST]:
    """The statements under `if TYPE_CHECKING:` (read by type checkers only)."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test).endswith("TYPE_CHECKING")]
    return {node for block in blocks for statement in block.body for node in ast.walk(statement)}


def imports_of(path: Path, text: str | None = None) -> list[Import]:
    """Every import of rlhfkit code in the file (or in `text` as if it were that file), also inside functions
    and `if TYPE_CHECKING:`."""
    source = module_name(path)
    package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    typing_only = typing_only_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(source, path, node.lineno, alias.name, None, node in typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                # `from rlhfkit import assets` imports the module rlhfkit.assets
                is_module = (SRC.parent / module.replace(".", "/") / alias.name).exists() or (
                    SRC.parent / f"{module.replace('.', '/')}/{alias.name}.py"
                ).exists()
                found.append(
                    Import(source, path, node.lineno, f"{module}.{alias.name}", None, node in typing_only)
                    if is_module
                    else Import(source, path, node.lineno, module, alias.name, node in typing_only)
                )
    return [i for i in found if i.module == "rlhfkit" or i.module.startswith("rlhfkit.")]


def all_imports() -> list[Import]:
    return [i for path in sorted(SRC.rglob("*.py")) for i in imports_of(path)]


LAYERS = {"the shared layer": SHARED, "a stage": STAGES, "a pipeline": PIPELINES, "an entry point": ENTRY}
LAYER = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}
LAYER_NAME = {part: name for name, parts in LAYERS.items() for part in parts}


def violation(i: Import) -> str | None:
    """Why this import breaks the layering, or None."""
    here, there = top(i.source), top(i.module)
    if here == there or LAYER[there] < LAYER[here] or (LAYER[there] == LAYER[here] and here in SHARED | ENTRY):
        return None
    if here in STAGES and there in STAGES:
        if i.name in ALLOWED.get((here, i.module), set()):
            return None
        return "a stage imports the shared layer, not another stage (ALLOWED lists the public loaders)"
    return f"{LAYER_NAME[here]} imports {LAYER_NAME[there]}"


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    layered = SHARED | STAGES | PIPELINES | ENTRY
    assert parts - layered == set(), "put the new module in a layer of tests/test_layering.py"
    assert layered - parts == set(), "a layer lists a module that is gone"


def test_stages_import_only_the_shared_layer_and_public_loaders():
    broken = [f"{i.where}: {i.module}:{i.name or ''}: {why}" for i in all_imports() if (why := violation(i))]
    assert broken == [], "\n".join(broken)


def test_the_allowed_stage_to_stage_imports_are_few_and_used():
    stage_to_stage = {
        (top(i.source), i.module, i.name)
        for i in all_imports()
        if top(i.source) in STAGES and top(i.module) in STAGES and top(i.source) != top(i.module)
    }
    allowed = {(stage, module, name) for (stage, module), names in ALLOWED.items() for name in names}
    assert len(ALLOWED) <= 5
    assert stage_to_stage == allowed, "the stage→stage imports differ from ALLOWED"


def import_cycle() -> list[str]:
    """One circle of modules importing each other when the code runs (`if TYPE_CHECKING:` aside), or []."""
    graph: dict[str, set[str]] = {}
    for i in all_imports():
        graph.setdefault(i.source, set())
        if not i.typing_only and i.module != i.source:
            graph[i.source].add(i.module)
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str]:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return []

    return next((cycle for module in sorted(graph) if module not in state and (cycle := visit(module, [module]))), [])


def test_no_module_imports_itself_through_others():
    assert import_cycle() == []


def test_the_checker_reads_relative_and_module_imports():
    probe = "from ..dpo.losses import LOSSES\nfrom rlhfkit import labeling\nimport rlhfkit.sft.train\n"
    found = [(i.module, i.name, violation(i) is not None) for i in imports_of(SRC / "ppo" / "probe.py", probe)]
    assert found == [
        ("rlhfkit.dpo.losses", "LOSSES", True),
        ("rlhfkit.labeling", None, True),
        ("rlhfkit.sft.train", None, True),
    ]
    probe = SRC / "ppo" / "model.py"
    assert violation(Import("rlhfkit.data.records", probe, 1, "rlhfkit.labeling.simulated", "LabelConfig"))
    assert violation(Import("rlhfkit.loop", probe, 1, "rlhfkit.quickstart", "best_vs_worst"))
    assert violation(Import("rlhfkit.ppo.model", probe, 1, "rlhfkit.reward.train", "train")) is not None
    assert violation(Import("rlhfkit.control.train", probe, 1, "rlhfkit.feedback.queue", "request_judgments")) is None
