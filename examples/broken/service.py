"""A model whose setup() fails: Berth must say why instead of hanging."""

from workers.service import Service


class Broken(Service):
    def setup(self) -> None:
        raise RuntimeError("weights file model.bin not found")

    def infer(self, prompt: str) -> dict:
        return {"text": prompt}
