"""A model for tests: reports its pid, can be slowed down, logs calls in order, can fail setup."""

import os
import time
from pathlib import Path

from workers.service import Service


class Probe(Service):
    def setup(self) -> None:
        time.sleep(float(os.environ.get("PROBE_SETUP_DELAY", "0")))
        if os.environ.get("PROBE_FAIL_SETUP"):
            raise RuntimeError(os.environ["PROBE_FAIL_SETUP"])

    def infer(self, prompt: str, sleep: float = 0.0, log: str = "", mark: str = "") -> dict:
        if log:  # record the order in which requests reach the model
            with Path(log).open("a") as fh:
                fh.write(f"{prompt}\n")
        if mark:  # which replica runs it; a run after the first answers at once
            if Path(mark).exists():
                sleep = 0.0
            else:
                Path(mark).write_text(os.environ.get("OCTOAI_REPLICA_NAME", ""))
        time.sleep(sleep)
        return {
            "prompt": prompt,
            "pid": os.getpid(),
            "replica": os.environ.get("OCTOAI_REPLICA_NAME"),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "port": os.environ.get("PORT"),
        }

    def say(self, text: str, env: str = "") -> dict:
        """Print a line to the replica's output (with an environment variable's value, if named)."""
        print(text + (" " + os.environ.get(env, "") if env else ""), flush=True)
        return {"said": True}

    def chunks(self, prompt: str, n: int = 3, delay: float = 0.0, log: str = ""):
        """A streamed answer: ``n`` chunks, ``delay`` seconds apart (logs each one sent)."""
        for i in range(n):
            if i:
                time.sleep(delay)
            if log:
                with Path(log).open("a") as fh:
                    fh.write(f"{prompt}-{i}\n")
            yield {"i": i, "text": f"{prompt} {i}"}

    def crash(self, code: int = 1) -> dict:
        """Exit the replica process at once, mid-request."""
        os._exit(code)

    def env(self, name: str) -> dict:
        return {"value": os.environ.get(name)}
