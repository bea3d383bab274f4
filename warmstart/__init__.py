"""warmstart: PyTorch model serving behind Celery, without cold starts.

The names a user needs first::

    from warmstart import Client, load_settings, publish_module, restore_model

    settings = load_settings()                      # WARMSTART_* from the environment
    publish_module(open_store(settings), "my-model", "v1", module, architecture=..., inputs=...)
    answer = Client(settings).infer("my-model", {"x": tensor}, timeout_s=10)

The package is layered; each floor imports only the floors below it:
``warmstart.infra`` (settings, errors, Redis, the Celery app) ← ``warmstart.snapshot`` ←
``warmstart.workers`` ← ``warmstart.scheduler`` ← the application layer (``warmstart.cli``,
``warmstart.demo``, ``warmstart.app``, ``warmstart.bench``). The names below are imported on
first use, so ``import warmstart`` stays cheap (no torch until a name that needs it is used).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_PUBLIC = {
    "Client": "warmstart.workers.client",
    "PendingInference": "warmstart.workers.client",
    "Settings": "warmstart.infra.settings",
    "load_settings": "warmstart.infra.settings",
    "WarmstartError": "warmstart.infra.errors",
    "open_store": "warmstart.snapshot.stores",
    "open_store_url": "warmstart.snapshot.stores",
    "publish_module": "warmstart.snapshot.publish",
    "publish_file": "warmstart.snapshot.publish",
    "restore_model": "warmstart.snapshot.restore",
    "Tier": "warmstart.infra.tiers",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from warmstart.infra.errors import WarmstartError
    from warmstart.infra.settings import Settings, load_settings
    from warmstart.infra.tiers import Tier
    from warmstart.snapshot.publish import publish_file, publish_module
    from warmstart.snapshot.restore import restore_model
    from warmstart.snapshot.stores import open_store, open_store_url
    from warmstart.workers.client import Client, PendingInference


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'warmstart' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
