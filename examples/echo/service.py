"""An echo model: the smallest useful Berth Service."""

import os
import time

from workers.service import Service


class Echo(Service):
    def setup(self) -> None:
        self.replica = os.environ.get("OCTOAI_REPLICA_NAME", "local")
        self.delay = float(os.environ.get("ECHO_SETUP_DELAY", "0"))
        time.sleep(self.delay)

    def infer(self, prompt: str, n: int = 1, sleep: float = 0.0) -> dict:
        if sleep:
            time.sleep(sleep)
        return {"text": prompt * n, "replica": self.replica}

    def upper(self, text: str) -> dict:
        """An extra route: POST /upper."""
        return {"text": text.upper()}
