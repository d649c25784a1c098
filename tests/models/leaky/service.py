"""A careless model: prints its secret, then fails setup() with it in the message.

Berth must not carry the value on into a reason, an event or a response.
"""

import os

from workers.service import Service


class Leaky(Service):
    def setup(self) -> None:
        key = os.environ.get("LEAK_CANARY", "")
        print(f"loading with key {key}", flush=True)
        raise RuntimeError(f"the upstream refused key {key}")

    def infer(self, prompt: str) -> dict:
        return {"prompt": prompt}
