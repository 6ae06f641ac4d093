"""The structure reads one way: request -> prepare -> train -> weights -> evaluate -> report.

Every import in the package (module level or inside a function) is checked: a module may import
its own layer or an earlier one, never a later one. `methods` (the recipes and the run pipeline)
orchestrate prepare, train and weights and never evaluate; entry points (api, cli, demo) sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "obliviate"

# (layer, module prefixes), earliest first; the longest matching prefix decides.
LAYERS = [
    ("foundation", ("errors", "io", "versions", "hardware", "prompt_formats", "prompts", "fingerprints", "models",
                    "rundir", "config", "config_checks", "credentials", "builtin_modules", "methods.registry",
                    "__init__")),
    ("request", ("data",)),
    ("prepare", ("prepare",)),
    ("train", ("objectives", "training", "training_callbacks", "training_checkpoints", "training_compile")),
    ("weights", ("weights",)),
    ("methods", ("methods",)),
    ("evaluate", ("evaluation",)),  # a benchmark writes its own tables (evaluation/report.py)
    ("report", ("report",)),  # comparisons across runs
    ("entry", ("api", "cli", "cli_args", "cli_run", "cli_eval", "cli_tools", "demo", "__main__", "bench")),
]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"obliviate.{module} belongs to no layer; add it to LAYERS"
    return rank


def _is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split(".")) if dotted else PACKAGE
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports_of(path: Path) -> set[str]:
    """Modules of the package that `path` imports, as dotted names below `obliviate`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "obliviate":
            base = node.module.removeprefix("obliviate").strip(".")
            submodules = [f"{base}.{a.name}".strip(".") for a in node.names if _is_module(f"{base}.{a.name}".strip("."))]
            names.update(submodules or [base or "__init__"])  # `from obliviate.x import y` imports x.y if y is a module
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("obliviate").strip(".") or "__init__" for a in node.names
                         if a.name.split(".")[0] == "obliviate")
    return names


def test_no_module_imports_a_later_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = module.removesuffix(".__init__") if module != "__init__" else module
        for imported in imports_of(path):
            if layer_of(imported) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                             f"({LAYERS[layer_of(imported)][0]})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_planted_backwards_import(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("def f():\n    from obliviate.evaluation import metrics\n")
    assert layer_of(next(iter(imports_of(planted)))) > layer_of("training")
