"""OctoAI's older Python client (``octoai-sdk`` 0.10.1), unchanged, against Berth's asset
library. Run in an environment of its own (tests/test_octoai_clients.py); prints one
JSON line. Arguments: the base URL and a scratch folder; the token from OCTOAI_TOKEN.
"""

import json
import os
import struct
import sys
from pathlib import Path

from octoai.clients.asset_orch import AssetOrchestrator, FileData, LoraData

base, scratch = sys.argv[1], Path(sys.argv[2])
tag = os.environ["TAG"]
# The client joins its endpoint and paths with a slash: "<base>/" + "/v1/..." as it does
# with its own default host.
orch = AssetOrchestrator(token=os.environ["OCTOAI_TOKEN"], endpoint=base + "/")

header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
lora = scratch / "lora010.safetensors"
lora.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
made = orch.create(
    data=LoraData(
        data_type="fp16",
        engine="image/stable-diffusion-xl-v1-0",
        file_format="safetensors",
    ),
    name=f"lora010-{tag}",
    file=str(lora),
    description="a LoRA from octoai-sdk 0.10.1",
)
ready = orch.wait_for_ready(made, poll_interval=1)
text = scratch / "notes010.txt"
text.write_text("hello from octoai-sdk 0.10.1\n")
plain = orch.create(data=FileData(file_format="txt"), name=f"notes010-{tag}", file=str(text))
listed = orch.list(name=f"notes010-{tag}", limit=10)
got = orch.get(name=f"lora010-{tag}")
deleted = orch.delete(plain.id)
print(
    json.dumps(
        {
            "made": {
                "status": getattr(ready.status, "value", ready.status),
                "size": ready.size_bytes,
                "id": ready.id,
            },
            "plain": getattr(plain.status, "value", plain.status),
            "listed": [a.name for a in listed],
            "got": got.id,
            "deleted": deleted.id,
            "after": getattr(orch.get(id=plain.id).status, "value", None),
        }
    )
)
