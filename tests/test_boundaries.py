"""The project's boundaries, checked on its source: what may import what.

- ``broker/`` is the only package that speaks NATS: no other module imports
  ``nats``, imports ``broker.wire`` (the hand-written client), or reaches a
  client handle of a Broker (``.nc``, ``.js``, ``.wire()``, ``.kv()``).
- Packages import downward only: ``shared`` imports no other Berth package,
  ``broker`` only ``shared``; ``scaler`` and ``workers`` never import ``api``,
  and ``api`` never imports ``scaler``.
- Only ``broker.jobs`` writes a job record, through ``shared.lifecycle``.

Tests are outside the rule: they reach NATS directly to probe what Berth left there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "berth", "bench", "broker", "examples", "scaler", "shared", "workers")
HANDLES = frozenset({"nc", "js", "wire", "kv"})
# What Berth's packages each may import of the others (a package, or one module). The
# span recorder workers.tracing imports nothing of Berth (it is copied into model images
# beside the model server), so every process records spans with it.
MAY_IMPORT = {
    "shared": {"workers.tracing"},
    "broker": {"shared", "workers.tracing"},
    "workers": {"shared", "broker"},
    "scaler": {"shared", "broker", "workers.tracing"},
    "api": {"shared", "broker", "workers"},
}


def _modules() -> list[Path]:
    found: list[Path] = []
    for package in PACKAGES:
        found += sorted(p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)
    return found


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _package(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def test_the_checks_see_the_source() -> None:
    modules = _modules()
    assert len(modules) > 80
    assert ROOT / "broker" / "wire.py" in modules


def test_only_broker_speaks_nats() -> None:
    found: list[str] = []
    for path in _modules():
        if _package(path) == "broker":
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for name, line in _imports(tree):
            if name in ("nats", "broker.wire") or name.startswith(("nats.", "broker.wire.")):
                found.append(f"{where}:{line} imports {name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in HANDLES
                and "broker" in ast.unparse(node.value)
            ):
                found.append(f"{where}:{node.lineno} reaches .{node.attr}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_downward_only(package: str) -> None:
    berth = set(PACKAGES) | {"tests"}
    found: list[str] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for name, line in _imports(tree):
            top = name.split(".")[0]
            allowed = MAY_IMPORT[package]
            module = name.rsplit(".", 1)[0]
            if top in berth and top != package and not {top, name, module} & allowed:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not found, "\n".join(found)


def test_only_the_job_store_writes_jobs() -> None:
    """Job records change only through broker.jobs.apply (which asks shared.lifecycle)."""
    found: list[str] = []
    for path in _modules():
        source = path.read_text()
        where = path.relative_to(ROOT)
        if where.as_posix() == "broker/jobs.py":
            continue
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if called == "kv_write" or (
                    called in ("js_publish", "kv_write") and "KV_JOBS" in ast.unparse(node)
                ):
                    found.append(f"{where}:{node.lineno} writes {ast.unparse(node)[:80]}")
    allowed = {"broker/streams.py"}  # where kv_write itself is defined and documented
    assert all(f.split(":")[0] in allowed for f in found), "\n".join(found)
