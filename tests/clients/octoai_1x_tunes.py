"""OctoAI's Python client 1.x (``octoai``), unchanged, against Berth's fine-tuning:
create a LoRA tune of the embeddings adapter trainer from a file asset of labelled
pairs, follow it with get until it ends, list, cancel another, delete.

Run in an environment of its own (tests/test_octoai_clients.py); prints one JSON line.
Arguments: the base URL and a scratch folder; the token comes from OCTOAI_TOKEN.
"""

import json
import os
import sys
import time
from pathlib import Path

from octoai.asset_library import Data_File
from octoai.client import OctoAI
from octoai.environment import OctoAIEnvironment
from octoai.fine_tuning import Details_LoraTune, LoraTuneCheckpoint, LoraTuneFile

base, scratch = sys.argv[1], Path(sys.argv[2])
tag = os.environ["TAG"]
client = OctoAI(
    api_key=os.environ["OCTOAI_TOKEN"],
    environment=OctoAIEnvironment(default=base, image_gen=base, text_gen=base),
)
pairs = scratch / "pairs.jsonl"
rows = [
    {"a": "A ship comes into the harbour", "b": "A boat arrives at the dock", "label": 1},
    {"a": "The cat sleeps on the sofa", "b": "A kitten naps on the couch", "label": 1},
    {"a": "A ship comes into the harbour", "b": "The soup is too salty", "label": 0},
    {"a": "The cat sleeps on the sofa", "b": "Stock prices fell sharply", "label": 0},
]
pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
asset = client.asset_library.create_from_file(
    file=str(pairs), data=Data_File(file_format="jsonl"), name=f"pairs-{tag}"
)


def details(steps: int) -> Details_LoraTune:
    return Details_LoraTune(
        base_checkpoint=LoraTuneCheckpoint(
            checkpoint_id="all-minilm-l6-v2", engine="text/all-minilm-l6-v2"
        ),
        files=[LoraTuneFile(file_id=asset.id, caption="pairs")],
        steps=steps,
        trigger_words=["berthy"],
    )


tune = client.fine_tuning.create(name=f"tune-{tag}", details=details(100), description="1.x")
deadline = time.monotonic() + 300
while tune.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
    time.sleep(1)
    tune = client.fine_tuning.get(tune.id)
other = client.fine_tuning.create(name=f"other-{tag}", details=details(20_000))
cancelled = client.fine_tuning.cancel(other.id)
listed = client.fine_tuning.list(name=tag)
client.fine_tuning.delete(other.id)
print(
    json.dumps(
        {
            "status": tune.status,
            "status_details": tune.status_details,
            "outputs": tune.output_lora_ids,
            "tune_type": tune.tune_type,
            "cancelled": cancelled.status,
            "listed": sorted(t.name for t in listed.data),
            "after_delete": sorted(t.name for t in client.fine_tuning.list(name=tag).data),
            "lora": client.asset_library.get(tune.output_lora_ids[0]).asset.asset_type
            if tune.output_lora_ids
            else None,
        }
    )
)
