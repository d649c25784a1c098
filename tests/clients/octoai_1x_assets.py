"""OctoAI's Python client 1.x (``octoai``), unchanged, against Berth's asset library.

Run in an environment of its own (tests/test_octoai_clients.py); prints one JSON line.
Arguments: the base URL and a scratch folder; the token comes from OCTOAI_TOKEN.
"""

import json
import os
import struct
import sys
from pathlib import Path

from octoai.asset_library import Data_File, Data_Lora
from octoai.client import OctoAI
from octoai.environment import OctoAIEnvironment

base, scratch = sys.argv[1], Path(sys.argv[2])
tag = os.environ["TAG"]
client = OctoAI(
    api_key=os.environ["OCTOAI_TOKEN"],
    environment=OctoAIEnvironment(default=base, image_gen=base, text_gen=base),
)
lib = client.asset_library

header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
lora = scratch / "lora.safetensors"
lora.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
made = lib.create_from_file(  # create, PUT to the presigned URL, complete, wait for ready
    file=str(lora),
    data=Data_Lora(
        engine="image/stable-diffusion-xl-v1-0",
        data_type="fp16",
        file_format="safetensors",
        trigger_words=["berthy"],
    ),
    name=f"lora-{tag}",
    description="a LoRA from octoai 1.x",
)
text = scratch / "notes.txt"
text.write_text("hello from octoai 1.x\n")
plain = lib.create(name=f"notes-{tag}", asset_type="file", data=Data_File(file_format="txt"))
import httpx  # noqa: E402  (what create_from_file does, by hand: the client's own types)

httpx.put(plain.transfer_api.put_url, content=text.read_bytes()).raise_for_status()
lib.complete_upload(plain.asset.id)
listed = lib.list(name=tag, asset_type=["lora", "file"], limit=10)
by_name = lib.get(f"lora-{tag}")
by_owner = lib.get(f"{made.tenant_uuid}/lora-{tag}")
deleted = lib.delete(plain.asset.id)
from_url = lib.create_from_url(  # Berth fetches it; the client waits for ready
    url=os.environ["ASSET_URL"], data=Data_File(file_format="txt"), name=f"fetched-{tag}"
)
print(
    json.dumps(
        {
            "made": {"status": made.status, "size": made.size_bytes, "id": made.id},
            "listed": sorted(a.name for a in listed.data),
            "total": listed.total,
            "by_name": by_name.asset.id,
            "by_owner": by_owner.asset.id,
            "deleted": deleted.id,
            "after": lib.get(plain.asset.id).asset.status,
            "from_url": {"status": from_url.status, "size": from_url.size_bytes},
        }
    )
)
