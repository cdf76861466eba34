"""The packages import one way: trainables <- sweeps (fit <- design <- storage <- cluster <- search
<- tracking <- run) <- analysis <- minima. Read from the source, as docs/architecture.md states it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["trainables", "sweeps.fit", "sweeps.design", "sweeps.storage", "sweeps.cluster", "sweeps.search",
          "sweeps.tracking", "sweeps.run", "analysis", "minima"]


def layer(module: str) -> int | None:
    found = None
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            found = i
    return found


def imports(path: Path) -> tuple[str, list[str]]:
    """The module's dotted name and every module it imports (function-local imports too)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
    return ".".join(parts), found


def test_every_package_imports_only_the_layers_below_it():
    upward = []
    for top in ("trainables", "sweeps", "analysis", "minima"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module, targets = imports(path)
            for target in targets:
                here, there = layer(module), layer(target)
                if here is not None and there is not None and there > here:
                    upward.append(f"{module} imports {target}")
    assert upward == []


def test_every_sweeps_subpackage_is_a_layer():
    subpackages = {p.parent.name for p in (ROOT / "sweeps").glob("*/__init__.py")}
    assert {f"sweeps.{name}" for name in subpackages} == {name for name in LAYERS if name.startswith("sweeps.")}
    assert not [p.name for p in (ROOT / "sweeps").glob("*.py") if p.name != "__init__.py"], "a module outside the layers"


def test_the_flat_module_names_of_stored_sweeps_resolve_to_their_modules():
    """Tune pickled stored sweeps' searchers and callbacks as `sweeps.<module>`."""
    import importlib

    import sweeps
    from sweeps.design.spec import SweepSpec

    assert importlib.import_module("sweeps.spec").SweepSpec is SweepSpec
    for package, modules in sweeps._FLAT_NAMES.items():
        assert package not in sweeps._HOME, f"sweeps.{package} would hide the stored name of a module"
        for name in modules:
            assert importlib.import_module(f"sweeps.{name}") is importlib.import_module(f"sweeps.{package}.{name}")
