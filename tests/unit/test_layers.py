"""The floors only look down: each layer imports only the layers below it.

``infra`` (ground) ← ``snapshot`` ← ``workers`` ← ``scheduler`` ← the application layer
(``warmstart/``: CLI, demo, app, launchers; and ``bench/``). Every import in the code uses the
``warmstart.`` namespace; the old top-level names (``infra``, ``workers``…) are gone. Imports
inside functions count the same as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> its layer.
FOLDERS = {"infra": "infra", "snapshot": "snapshot", "workers": "workers", "scheduler": "scheduler",
           "bench": "app", "warmstart": "app"}  # fmt: skip
#: What each layer may import (besides itself).
ALLOWED = {
    "infra": set(),
    "snapshot": {"infra"},
    "workers": {"infra", "snapshot"},
    "scheduler": {"infra", "snapshot", "workers"},
    "app": {"infra", "snapshot", "workers", "scheduler", "app"},
}
OLD_TOP_LEVEL = {"infra", "snapshot", "workers", "scheduler", "bench"}


def layer_of_module(module: str) -> str | None:
    """``warmstart.workers.pool`` -> ``workers``; ``warmstart`` or ``warmstart.cli`` -> ``app``."""
    parts = module.split(".")
    if parts[0] != "warmstart":
        return None
    if len(parts) == 1:
        return "app"
    return {"bench": "app"}.get(parts[1], parts[1] if parts[1] in ALLOWED else "app")


def violations(source: str, layer: str, filename: str = "<source>") -> list[str]:
    """The imports in ``source`` (a module of ``layer``) that look up or use an old name."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + (
                [f"warmstart.{a.name}" for a in node.names] if node.module == "warmstart" else []
            )
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OLD_TOP_LEVEL:
                found.append(f"{filename}:{node.lineno} imports {name!r}: use 'warmstart.{name}'")
                continue
            target = layer_of_module(name)
            if name == "warmstart" and isinstance(node, ast.ImportFrom):
                continue  # judged by the names it imports, above
            if target is not None and target != layer and target not in ALLOWED[layer]:
                found.append(f"{filename}:{node.lineno}: {layer} imports {name} ({target} is above it)")
    return found


def source_files() -> list[tuple[Path, str]]:
    return [(path, layer) for folder, layer in FOLDERS.items() for path in sorted((ROOT / folder).rglob("*.py"))]


def test_every_layer_imports_only_the_layers_below_it() -> None:
    problems = []
    for path, layer in source_files():
        problems += violations(path.read_text(), layer, str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


def test_tests_use_the_namespace_too() -> None:
    problems = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        problems += [p for p in violations(path.read_text(), "app", str(path.relative_to(ROOT))) if "use 'warmstart." in p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "layer", "bad"),
    [
        ("from warmstart.scheduler.traffic import TrafficRecorder", "workers", True),
        ("def f():\n    from warmstart.workers import pool", "snapshot", True),
        ("import warmstart.cli", "infra", True),
        ("from warmstart import Client", "workers", True),
        ("from workers.pool import ModelPool", "app", True),
        ("from warmstart.infra.errors import WarmstartError", "snapshot", False),
        ("from warmstart.workers.arrivals import ArrivalRecorder", "workers", False),
        ("from warmstart.scheduler.beat import BeatScheduler", "app", False),
        ("from . import sibling", "infra", False),
    ],
)
def test_the_checker_catches_upward_and_old_imports(source: str, layer: str, bad: bool) -> None:
    assert bool(violations(source, layer)) is bad
