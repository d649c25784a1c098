"""OctoAI's older Python client (``octoai-sdk`` 0.10.1), unchanged, against Berth's
fine-tuning: upload two pictures with its asset client, create a LoRA tune of Stable
Diffusion XL from them (0.10 knows only the image engines), follow it with get until it
ends, list, cancel another, delete.

Run in an environment of its own (tests/test_octoai_clients.py); prints one JSON line.
Arguments: the base URL and a scratch folder; the token comes from OCTOAI_TOKEN.
"""

import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

from octoai.clients.asset_orch import AssetOrchestrator, FileData
from octoai.clients.fine_tuning import FineTuningClient

base, scratch = sys.argv[1], Path(sys.argv[2])
tag = os.environ["TAG"]
token = os.environ["OCTOAI_TOKEN"]
# The clients join their endpoint and paths with a slash, as with their own default host.
orch = AssetOrchestrator(token=token, endpoint=base + "/")
tunes = FineTuningClient(token=token, endpoint=base + "/")


def png(path: Path, rgb: tuple, side: int = 24) -> None:
    """A plain PNG of one colour (written by hand: this environment has no Pillow)."""
    row = b"\0" + bytes(rgb) * side
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * side))
        + chunk(b"IEND", b"")
    )


pictures = []
for colour, rgb in (("blue", (20, 40, 220)), ("yellow", (230, 220, 30))):
    path = scratch / f"{colour}.png"
    png(path, rgb)
    made = orch.create(data=FileData(file_format="png"), name=f"{colour}010-{tag}", file=str(path))
    pictures.append(orch.wait_for_ready(made, poll_interval=1))

engine = "image/stable-diffusion-xl-v1-0"
tune = tunes.create(
    name=f"tune010-{tag}",
    base_checkpoint="octoai:default-sdxl",
    files={pictures[0]: "a berthy in blue", pictures[1]: "a berthy in yellow"},
    trigger_words="berthy",
    steps=8,
    engine=engine,
    seed=5,
)
deadline = time.monotonic() + 600
while tune.status.value not in ("succeeded", "failed", "cancelled"):
    if time.monotonic() > deadline:
        break
    time.sleep(1)
    tune = tunes.get(tune.id)
other = tunes.create(
    name=f"other010-{tag}",
    base_checkpoint="octoai:default-sdxl",
    files=[p.id for p in pictures],
    trigger_words=["berthy"],
    steps=20_000,
    engine=engine,
)
cancelled = tunes.cancel(other.id)
listed = tunes.list(name=None, limit=100)
mine = sorted(t.name for t in listed.data if t.name.endswith(tag))
tunes.delete(other.id)
after = sorted(t.name for t in tunes.list(limit=100).data if t.name.endswith(tag))
details = tune.details.actual_instance
print(
    json.dumps(
        {
            "status": tune.status.value,
            "status_details": tune.status_details,
            "outputs": tune.output_lora_ids,
            "tune_type": tune.tune_type.value,
            "engine": details.base_checkpoint.engine.value,
            "cancelled": cancelled.status.value,
            "listed": mine,
            "after_delete": after,
        }
    )
)
