"""The base class model authors subclass (OctoAI's ``Service`` contract).

::

    class Echo(Service):
        def setup(self) -> None:
            self.prefix = "echo: "

        def infer(self, prompt: str, n: int = 1) -> dict:
            return {"text": self.prefix + prompt * n}

``setup()`` runs once per replica before it takes work. ``infer`` needs type
annotations: its signature becomes the ``/infer`` input schema. Every other
public method becomes ``POST /<method-name-with-dashes>``, or the path given
with :func:`route`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "MODEL_SITE_ENV",
    "REPLICA_KEY_ENV",
    "REPLICA_KEY_HEADER",
    "InvalidInput",
    "Service",
    "find_service",
    "public_routes",
    "route",
]

# Each replica's own key: the agent sends it with every request, and Berth's model server
# answers nothing without it, so no other local process (another endpoint's model, say)
# can call a replica directly. It reaches the replica in its environment, taken out of it
# before the model's code loads.
REPLICA_KEY_HEADER = "x-berth-replica-key"
REPLICA_KEY_ENV = "BERTH_REPLICA_KEY"
# Where the model's own packages (its requirements.txt) were installed, if anywhere.
MODEL_SITE_ENV = "BERTH_MODEL_SITE"

F = TypeVar("F", bound=Callable[..., Any])


class InvalidInput(ValueError):
    """Raised by a model for input it cannot use (an image that does not decode, say):
    the caller gets a 422 with the message, not a 500."""


_BASE_METHODS = {"setup", "infer", "on_server_startup", "on_server_shutdown"}


class Service:
    """Subclass this and implement :meth:`infer` (and usually :meth:`setup`)."""

    def setup(self) -> None:
        """Load weights and warm up; runs once, before the replica reports ready."""

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def on_server_startup(self) -> None:
        """Runs when the HTTP server starts, before setup()."""

    def on_server_shutdown(self) -> None:
        """Runs when the replica is stopping."""


def route(path: str) -> Callable[[F], F]:
    """Serve a public method at ``path`` instead of ``/<method-name>``."""
    if not path.startswith("/"):
        raise ValueError("a route path must start with '/'")

    def mark(fn: F) -> F:
        fn.__berth_route__ = path  # type: ignore[attr-defined]
        return fn

    return mark


def public_routes(service: Service) -> dict[str, Callable[..., Any]]:
    """The extra routes of a service: path → bound method."""
    routes: dict[str, Callable[..., Any]] = {}
    for name, _ in inspect.getmembers(type(service), predicate=inspect.isfunction):
        if name.startswith("_") or name in _BASE_METHODS:
            continue
        method = getattr(service, name)
        path = getattr(method, "__berth_route__", "/" + name.replace("_", "-"))
        routes[path] = method
    return routes


def find_service(module: Any) -> type[Service]:
    """The one Service subclass a ``service.py`` module defines."""
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Service)
        and obj is not Service
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise TypeError(f"service.py must define exactly one Service subclass (found: {names})")
    return found[0]
