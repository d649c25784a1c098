"""Packing a model folder as the API takes it: a reproducible tar.gz.

Here in ``shared`` so that the SDK (which speaks no NATS) and the API pack alike.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

__all__ = ["pack_dir"]


def pack_dir(path: Path) -> bytes:
    """A reproducible tar.gz of a model folder (caches and VCS folders left out)."""
    skip = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path)
            if any(part in skip for part in rel.parts) or not file.is_file():
                continue
            info = tar.gettarinfo(str(file), arcname=str(rel))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with file.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()
