"""A model that needs a secret: it reads GREETING from its environment.

Store the value once, then name it in the endpoint's container_secrets:

    echo -n "Ahoy" | berth secrets set GREETING
    berth deploy ./examples/greeter --secret GREETING
    berth infer greeter '{"name": "Ada"}'      # {"output": {"text": "Ahoy, Ada!"}, ...}

A real model would read an API key or a model-hub token the same way.
"""

import os

from workers.service import Service


class Greeter(Service):
    def setup(self) -> None:
        greeting = os.environ.get("GREETING")
        if not greeting:
            raise RuntimeError("GREETING is not set: add it to the endpoint's container_secrets")
        self.greeting = greeting

    def infer(self, name: str) -> dict:
        return {"text": f"{self.greeting}, {name}!"}
