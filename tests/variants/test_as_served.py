"""Quality is measured on the answers a caller gets: an encoder's held-out rows are run as the
server runs them (`sessions.run_as_served`), on the tiny build's real graphs."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.repository.format import ModelEntry
from slimserve.repository.sessions import make_session, merges_requests, run_batched
from slimserve.variants.data import documentation_sentences, minilm_tokenizer, split_sentences
from slimserve.variants.evaluate import embed_as_served, encoder_scores
from tests.conftest import tiny_minilm_recipe


def _held_out() -> dict[str, np.ndarray]:
    """The tiny recipe's held-out rows, tokenized as its build did (padded to the longest)."""
    recipe = tiny_minilm_recipe()
    _, held_out = split_sentences(documentation_sentences())
    return minilm_tokenizer(recipe.max_tokens)(held_out[: recipe.eval_sentences])


def _alone(graph: bytes, inputs: dict[str, np.ndarray], row: int) -> np.ndarray:
    length = int(inputs["attention_mask"][row].sum())
    feed = {name: rows[row : row + 1, :length] for name, rows in inputs.items()}
    return make_session(graph, 1).run(None, feed)[0][0]


def test_a_graph_that_quantizes_at_run_time_is_scored_one_row_at_a_time(minilm: ModelEntry) -> None:
    graph = minilm.variants["int8"].onnx_path.read_bytes()
    inputs = _held_out()
    assert not merges_requests(graph)
    served = embed_as_served(graph, inputs, 1)
    for row in (0, 7, len(served) - 1):
        np.testing.assert_array_equal(served[row], _alone(graph, inputs, row))
    # Run 64 at a time, padded to the longest, one scale covers every row: not what is served.
    padded = run_batched(make_session(graph, 1), inputs)
    assert np.abs(padded - served).max() > 1e-4


def test_a_graph_that_merges_requests_is_scored_in_batches_cut_to_their_longest(minilm: ModelEntry) -> None:
    graph = minilm.variants["fp32"].onnx_path.read_bytes()
    inputs = _held_out()
    assert merges_requests(graph)
    served = embed_as_served(graph, inputs, 1)
    np.testing.assert_allclose(served, run_batched(make_session(graph, 1), inputs), atol=1e-5)
    np.testing.assert_allclose(served[5], _alone(graph, inputs, 5), atol=1e-5)


@pytest.mark.parametrize("variant", ["int8", "pruned", "distilled"])
def test_the_published_quality_is_that_of_the_served_answers(minilm: ModelEntry, variant: str) -> None:
    inputs = _held_out()
    reference = embed_as_served(minilm.variants["fp32"].onnx_path.read_bytes(), inputs, 1)
    embeddings = embed_as_served(minilm.variants[variant].onnx_path.read_bytes(), inputs, 1)
    quality, _ = encoder_scores(embeddings, reference)
    published = minilm.variants[variant].manifest.measurements
    assert published.eval_items == len(reference)
    assert published.quality["cosine"] == pytest.approx(quality["cosine"], abs=1e-6)
    assert published.quality["retrieval_agreement"] == pytest.approx(quality["retrieval_agreement"])
