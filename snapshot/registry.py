"""Which architectures a manifest may name.

A manifest is data from a bucket, not code. Restore only imports a factory that is registered:
listed in the ``warmstart.architectures`` entry-point group of an installed distribution, or in
``WARMSTART_ALLOWED_ARCHITECTURES``. Anything else is refused before any import happens.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

from warmstart.infra.errors import RestoreError, UnregisteredArchitectureError

ENTRY_POINT_GROUP = "warmstart.architectures"


#: modules an optional extra provides: an entry point that needs the extra (``[hf]`` after
#: its value) is registered only when they are installed.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {"hf": ("transformers",)}


def _installed(extras: Iterable[str]) -> bool:
    return all(
        importlib.util.find_spec(module) is not None
        for extra in extras
        for module in EXTRA_MODULES.get(extra, ())
    )


@lru_cache(maxsize=1)
def registered_factories() -> frozenset[str]:
    """The ``package.module:function`` values of the entry-point group (read once a process),
    leaving out those whose optional extra is not installed."""
    return frozenset(
        f"{ep.module}:{ep.attr}" for ep in entry_points(group=ENTRY_POINT_GROUP) if _installed(ep.extras)
    )


def check_allowed(factory: str, extra_allowed: Iterable[str] = ()) -> None:
    """Raise unless ``factory`` is registered.

    Raises:
        UnregisteredArchitectureError: with the registered names and how to register one.
    """
    allowed = registered_factories() | frozenset(extra_allowed)
    if factory not in allowed:
        raise UnregisteredArchitectureError(
            f"architecture {factory!r} is not registered, so it will not be imported. Register "
            f"it in the {ENTRY_POINT_GROUP!r} entry-point group of your package or add it to "
            f"WARMSTART_ALLOWED_ARCHITECTURES. Registered: {sorted(allowed)}"
        )


def resolve_factory(factory: str, extra_allowed: Iterable[str] = ()) -> Callable[..., Any]:
    """Import and return a registered factory.

    Raises:
        UnregisteredArchitectureError: not registered (nothing was imported).
        RestoreError: registered but cannot be imported or is not callable.
    """
    check_allowed(factory, extra_allowed)
    module_name, _, attr = factory.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise RestoreError(f"registered architecture {factory!r} cannot be imported: {e}") from e
    if not callable(target):
        raise RestoreError(f"registered architecture {factory!r} is not callable")
    return target
