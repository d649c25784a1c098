"""A model for tests: reads the assets its endpoint mounts, and tries to change them."""

import hashlib
import os
from pathlib import Path

from workers.service import Service


class Assets(Service):
    def infer(self, name: str) -> dict:
        folder = Path(os.environ["OCTOAI_VOLUME_PATH"]) / "assets"
        path = folder / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            with path.open("r+b") as f:
                f.write(b"changed")
            wrote = "changed it"
        except OSError as exc:
            wrote = type(exc).__name__
        try:
            real = os.path.realpath(path)
            with open(real, "ab") as f:
                f.write(b"!")
            wrote_real = "changed it"
        except OSError as exc:
            wrote_real = type(exc).__name__
        return {
            "names": sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")),
            "sha256": digest,
            "size": path.stat().st_size,
            "write": wrote,
            "write_real": wrote_real,
        }
