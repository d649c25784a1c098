"""``berth build`` and ``berth push``: a Python model folder as a container image.

The image holds the model folder, Berth's model server (``workers.replica`` and
what it imports) and that server's Python dependencies, copied from this
environment's installed distributions, so building needs no package index. The
copied compiled extensions fit the Python this environment runs (the default
base, ``python:3.11-slim``, matches Berth's own 3.11); the build checks the
result by importing the model server in the new image, and says so if the base
image's Python cannot load it. A ``requirements.txt`` in the model folder is
installed with pip at build time (that step needs a package index).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

__all__ = ["DEFAULT_BASE", "build_image", "push_image", "server_distributions"]

DEFAULT_BASE = "python:3.11-slim"
ROOT = Path(__file__).resolve().parents[1]
# Berth's model server: what `python -m workers.replica <dir>` imports from Berth.
SERVER_MODULES = (
    "__init__.py",
    "media.py",
    "replica.py",
    "server.py",
    "service.py",
    "span_export.py",
    "tracing.py",
)
SERVER_REQUIRES = ("fastapi", "uvicorn")

DOCKERFILE = """\
FROM {base}
COPY site/ /opt/berth/site/
COPY workers/ /opt/berth/workers/
COPY model/ /opt/model/
{requirements}\
ENV PYTHONPATH=/opt/berth/site:/opt/berth PYTHONUNBUFFERED=1 PORT=8080 \\
    BERTH_REPLICA_HOST=0.0.0.0
EXPOSE 8080
CMD ["python3", "-m", "workers.replica", "/opt/model"]
"""


def server_distributions(roots: Iterable[str] = SERVER_REQUIRES) -> list[str]:
    """The installed distributions the model server needs (roots and their requirements)."""
    found: dict[str, None] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        found[key] = None
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(found)


def _vendor(site: Path) -> None:
    for name in server_distributions():
        dist = distribution(name)
        for file in dist.files or []:
            if "__pycache__" in file.parts or (
                file.parts[0].endswith(".dist-info") is False and (file.parts[0] in ("..", "bin"))
            ):
                continue
            source = Path(str(file.locate()))
            if not source.is_file():
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def build_context(model_dir: Path, base: str, into: Path) -> Path:
    """A build context: Dockerfile, model/, workers/ (the server) and site/ (its packages)."""
    if not (model_dir / "service.py").is_file():
        raise ValueError(f"{model_dir} has no service.py")
    shutil.copytree(
        model_dir, into / "model", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git")
    )
    (into / "workers").mkdir()
    for module in SERVER_MODULES:
        shutil.copy2(ROOT / "workers" / module, into / "workers" / module)
    _vendor(into / "site")
    # The same files the process runtime installs (workers/environments.py).
    requirements = (
        "RUN python3 -m pip install --no-cache-dir -r /opt/model/requirements.txt\n"
        if (model_dir / "requirements.txt").is_file()
        else ""
    ) + (
        "RUN python3 -m pip install --no-cache-dir --no-deps -r /opt/model/requirements-nodeps.txt\n"
        if (model_dir / "requirements-nodeps.txt").is_file()
        else ""
    )
    (into / "Dockerfile").write_text(DOCKERFILE.format(base=base, requirements=requirements))
    return into


def build_image(
    client: Any,
    model_dir: Path,
    tag: str,
    *,
    base: str = DEFAULT_BASE,
    say: Callable[[str], None] = print,
) -> str:
    """Build ``tag`` from ``model_dir``; check the model server imports in it. The image id."""
    from docker.errors import BuildError, ContainerError

    with tempfile.TemporaryDirectory(prefix="berth-build-") as tmp:
        context = build_context(model_dir.resolve(), base, Path(tmp))
        try:
            image, logs = client.images.build(path=str(context), tag=tag, rm=True)
        except BuildError as exc:
            tail = "".join(str(c.get("stream", "")) for c in exc.build_log)[-2000:]
            raise RuntimeError(f"the build failed: {exc.msg}\n{tail}") from exc
        for chunk in logs:
            if chunk.get("stream", "").strip():
                say(chunk["stream"].rstrip())
    check = "import workers.replica, workers.server; print('ok')"
    try:
        client.containers.run(tag, ["python3", "-c", check], remove=True, network_mode="none")
    except ContainerError as exc:
        ours = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise RuntimeError(
            f"the image was built, but Berth's model server does not load in it (packages "
            f"copied from Python {ours}; use a python:{ours} base): {exc.stderr!r}"
        ) from exc
    return str(image.id)


def push_image(
    client: Any,
    tag: str,
    auth: dict[str, str] | None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Push ``tag`` to its registry; ``progress(bytes done, bytes total)`` as layers go."""
    layers: dict[str, tuple[int, int]] = {}
    for line in client.api.push(tag, stream=True, decode=True, auth_config=auth):
        if "error" in line:
            raise RuntimeError(f"push of {tag} failed: {line['error']}")
        detail = line.get("progressDetail") or {}
        if line.get("id") and detail.get("total"):
            layers[line["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
            if progress:
                progress(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
