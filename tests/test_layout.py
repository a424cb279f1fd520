"""The layout of ``arcore``: a few modules at the top, one subpackage per job, and imports that only run down the
floors (the command line on top; training; files; the model's contract; sampling; errors and lazy names at the
bottom), type-only imports included, so no two modules need each other. Read from every module's syntax tree, so a
new import that breaks a rule fails here. The old dotted paths of the
moved modules, which configs and users' code name, still import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCORE = ROOT / "arcore"
JOBS = ("sampling", "training", "files", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing_only: bool = True) -> set[str]:
    """The modules ``path`` imports (relative imports resolved); ``typing_only=False`` leaves out those under
    ``if TYPE_CHECKING:``, which never run."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for n in ast.walk(node)}
    name = module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # ``from arcore.files import weights``
    return {name for name in found if _is_module(name)}


def _is_module(name: str) -> bool:
    if not name.startswith("arcore"):
        return True
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def floor(module: str) -> str:
    """``front`` (the package's names, each loaded on first use), ``cli``, ``training``, ``files``, ``contract``,
    ``sampling`` or ``ground`` (the other top-level modules)."""
    parts = module.split(".")
    if module == "arcore":
        return "front"
    return parts[1] if len(parts) > 1 and parts[1] in (*JOBS, "contract") else "ground"


MODULES = {module_name(p): p for p in sorted(ARCORE.rglob("*.py"))}
FLOORS = ("ground", "sampling", "contract", "files", "training", "cli", "front")
BELOW = {name: set(FLOORS[: i + 1]) for i, name in enumerate(FLOORS)}
"""The floors each floor's modules may import, at run time or for types only."""


def test_the_top_level_holds_few_modules_and_a_subpackage_per_job():
    top = sorted(p.name for p in ARCORE.glob("*.py"))
    assert len(top) <= 8, top
    assert {"contract.py", "errors.py"} <= set(top)
    for job in JOBS:
        doc = ast.get_docstring(ast.parse((ARCORE / job / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()[0]) > 30, job  # a purpose a reader sees at once


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_floors_only(name):
    own = floor(name)
    for imported in imports(MODULES[name]):
        if imported.startswith("arcore."):
            assert floor(imported) in BELOW[own], f"{name} ({own}) imports {imported} ({floor(imported)})"


def test_nothing_outside_the_command_line_imports_it():
    packages = [*ARCORE.rglob("*.py"), *(ROOT / "pixelgen").rglob("*.py"), *(ROOT / "wavegen").rglob("*.py")]
    outside = [p for p in packages if floor(module_name(p)) != "cli" and p.name not in ("cli.py", "sample_cli.py")]
    assert len(outside) > 20
    for path in outside:
        assert not any(name.startswith("arcore.cli") for name in imports(path)), path


def test_nothing_in_sampling_reaches_lightning():
    """Followed through every arcore module a sampling module imports at run time."""
    for name in (n for n in MODULES if floor(n) == "sampling"):
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            for imported in imports(MODULES[current], typing_only=False):
                assert not imported.startswith(("pytorch_lightning", "lightning")), f"{name} via {current}"
                if imported in MODULES:
                    todo.append(imported)


def test_the_rule_checker_sees_a_forbidden_import(tmp_path):
    """The checks above read imports the way Python runs them: a relative import is resolved, a type-only one is
    told apart."""
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nimport pytorch_lightning\nif TYPE_CHECKING:\n"
                      "    from arcore.cli import launch\n")
    assert "pytorch_lightning" in imports(source)
    assert "arcore.cli.launch" in imports(source) and "arcore.cli.launch" not in imports(source, typing_only=False)
    assert imports(ARCORE / "sampling" / "engine.py") >= {"arcore.sampling.cache", "arcore.errors"}
    assert floor("arcore.contract") == "contract" and "contract" not in BELOW["sampling"]


@pytest.mark.parametrize("old,new", [("arcore.callbacks", "arcore.training.callbacks"),
                                     ("arcore.module", "arcore.training.module"),
                                     ("arcore.engine", "arcore.sampling.engine"),
                                     ("arcore.checkpoint", "arcore.files.checkpoint"),
                                     ("arcore.sample_cli", "arcore.cli.sample")])
def test_an_old_module_path_imports_the_moved_module(old, new):
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the module keeps its own identity
    from arcore.files import atomic_write  # arcore.files was a module: its names are found in the package

    assert atomic_write is importlib.import_module("arcore.files.atomic").atomic_write
