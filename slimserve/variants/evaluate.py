"""Quality of a variant, computed from its ONNX outputs on the held-out set.

Classifier: top-1 accuracy against the true labels; agreement with the reference variant
as top-1 agreement and mean KL(p_ref ‖ p_variant). Encoder: fidelity to the reference
embeddings, as mean cosine similarity, nearest-neighbour agreement (for each held-out
sentence, is its nearest other sentence the same under both embeddings?) and retrieval
agreement — what a vector-search application lives by: the held-out sentences are indexed
by the reference (as a vector store built offline is), each sentence is embedded by the
variant and searched for, excluding itself; it agrees when its nearest hit is the one the
reference's own embedding of it retrieves. `retrieval_hits` gives that per sentence.
An encoder's embeddings are computed as the server answers (`embed_as_served`).
"""

from __future__ import annotations

import numpy as np

from slimserve.repository.sessions import run_as_served


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def classifier_scores(
    logits: np.ndarray, labels: np.ndarray, reference_logits: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """(quality, agreement) for a classifier variant."""
    predicted = logits.argmax(axis=1)
    log_p_ref, log_p = _log_softmax(reference_logits), _log_softmax(logits)
    kl = float((np.exp(log_p_ref) * (log_p_ref - log_p)).sum(axis=1).mean())
    quality = {"accuracy": float((predicted == labels).mean())}
    agreement = {"top1": float((predicted == reference_logits.argmax(axis=1)).mean()), "kl": max(kl, 0.0)}
    return quality, agreement


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row (cosine)."""
    unit = _unit(embeddings)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def retrieval_hits(queries: np.ndarray, index: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """For each query (the embedding of index row `query_rows[i]`), the index row nearest to
    it other than that row itself (cosine)."""
    similarity = _unit(queries) @ _unit(index).T
    similarity[np.arange(len(queries)), query_rows] = -np.inf
    return similarity.argmax(axis=1)


def encoder_scores(embeddings: np.ndarray, reference: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """(quality, agreement) for an encoder variant; quality is fidelity to the reference."""
    cosine = float((_unit(embeddings) * _unit(reference)).sum(axis=1).mean())
    nn_agreement = float((nearest_neighbours(embeddings) == nearest_neighbours(reference)).mean())
    rows = np.arange(len(reference))
    retrieval = float((retrieval_hits(embeddings, reference, rows) == nearest_neighbours(reference)).mean())
    quality = {"cosine": cosine, "nn_agreement": nn_agreement, "retrieval_agreement": retrieval}
    return quality, {"cosine": cosine}


def embed_as_served(graph: bytes, inputs: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """Embeddings of every row as the server answers them (`sessions.run_as_served`): every
    quality figure of the build, and every choice made on the selection sentences, is then
    what a caller gets. A graph that quantizes at run time scores each sentence alone, at
    its own length; scored 64 at a time, padded to the longest of the set, one activation
    scale covered them all (and their padding), which no served request sees."""
    return run_as_served(graph, inputs, inputs["attention_mask"].sum(axis=1), threads)
