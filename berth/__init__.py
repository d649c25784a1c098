"""Berth: the ``berth`` command (``berth up`` runs everything on one machine) and the
Python SDK (``from berth import Client, AsyncClient``; see :mod:`berth.sdk`).

The SDK's names load on first use, so the command and the servers do not import it.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    sdk = importlib.import_module("berth.sdk")
    if name in sdk.__all__:
        return getattr(sdk, name)
    raise AttributeError(f"module 'berth' has no attribute {name!r}")
