"""A low-rank adapter on all-MiniLM-L6-v2's sentence vectors, and its trainer.

The adapter maps a unit vector e to u = e + A (B e), then back to unit length
(A: 384×r, B: r×384, LoRA's shape on the model's output; A starts at zero, so an
untrained adapter changes nothing). Training fits A and B to labelled pairs,
``{"a": text, "b": text, "label": 1 | 0}``: the cosine of a similar pair (1) is
pulled to 1 and of a dissimilar pair (0) to 0, by gradient descent (Adam) on the
mean squared error, with the base model's vectors computed once. NumPy only.

Saved as safetensors: ``lora_A``, ``lora_B`` and metadata naming the base model.
"""

import json

import numpy as np

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def apply(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unit vectors through the adapter, back to unit length."""
    u = vectors + (vectors @ b.T) @ a.T
    return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)


def read_pairs(path: str) -> list[tuple[str, str, float]]:
    """The labelled pairs of a JSON lines file; ValueError naming the line that is wrong."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row["a"]), str(row["b"]), float(row["label"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path.rsplit('/', 1)[-1]} line {number}: not {{a, b, label}}: {exc}"
                ) from exc
    return pairs


def loss(ea: np.ndarray, eb: np.ndarray, target: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    cos = (apply(ea, a, b) * apply(eb, a, b)).sum(1)
    return float(((cos - target) ** 2).mean())


def train(
    ea: np.ndarray,
    eb: np.ndarray,
    target: np.ndarray,
    *,
    rank: int = 8,
    steps: int = 300,
    learning_rate: float = 0.01,
    seed: int = 0,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A and B fitted to the pairs (ea[i], eb[i]) → target[i]; the loss every 10 steps."""
    rng = np.random.default_rng(seed)
    dim = ea.shape[1]
    a = np.zeros((dim, rank), dtype=np.float64)
    b = rng.normal(0.0, 1.0 / np.sqrt(dim), (rank, dim))
    params = [a, b]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    losses = []
    n = len(target)
    for step in range(1, steps + 1):
        # Forward: u = e + A B e, then unit length; cos of each pair.
        hu, hv = ea @ b.T, eb @ b.T  # (n, r)
        ru, rv = ea + hu @ a.T, eb + hv @ a.T  # (n, d)
        nu = np.linalg.norm(ru, axis=1, keepdims=True)
        nv = np.linalg.norm(rv, axis=1, keepdims=True)
        u, v = ru / nu, rv / nv
        cos = (u * v).sum(1, keepdims=True)
        err = cos - target[:, None]
        if step % 10 == 1:
            losses.append(float((err**2).mean()))
            if progress is not None:
                progress(step, losses[-1])
        # Backward: d(mean err²)/d cos, through the normalisation, to A and B.
        dcos = 2.0 * err / n
        du = dcos * (v - cos * u) / nu
        dv = dcos * (u - cos * v) / nv
        grad_a = du.T @ hu + dv.T @ hv
        grad_b = (du @ a).T @ ea + (dv @ a).T @ eb
        for i, (p, g) in enumerate(zip(params, (grad_a, grad_b), strict=True)):
            moments[i] = 0.9 * moments[i] + 0.1 * g
            squares[i] = 0.999 * squares[i] + 0.001 * g * g
            m = moments[i] / (1 - 0.9**step)
            s = squares[i] / (1 - 0.999**step)
            p -= learning_rate * m / (np.sqrt(s) + 1e-8)
    losses.append(loss(ea, eb, target, a, b))
    return a.astype(np.float32), b.astype(np.float32), losses


def save(path: str, a: np.ndarray, b: np.ndarray, meta: dict) -> None:
    from safetensors.numpy import save_file

    save_file(
        {"lora_A": a, "lora_B": b},
        path,
        metadata={"base_model": BASE, **{k: str(v) for k, v in meta.items()}},
    )


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An adapter file's A and B; ValueError if it is not an adapter of this model."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("base_model") != BASE or set(f.keys()) != {"lora_A", "lora_B"}:
            raise ValueError(f"{path.rsplit('/', 1)[-1]} is not an adapter of {BASE}")
        a, b = f.get_tensor("lora_A"), f.get_tensor("lora_B")
    if a.shape[0] != 384 or b.shape[1] != 384 or a.shape[1] != b.shape[0]:
        raise ValueError(f"{path.rsplit('/', 1)[-1]}: shapes {a.shape} and {b.shape} do not fit")
    return a, b
