"""Deep Compression's storage figure: exact Huffman lengths, and what they mean for real graphs."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.repository.format import ModelEntry
from slimserve.variants.coded_size import coded_bytes, coded_tensor_bytes, huffman_bits


def test_huffman_lengths_are_optimal_on_known_counts() -> None:
    # counts 1, 1, 2 → codes of 2, 2 and 1 bits → 2 + 2 + 2 bits
    assert huffman_bits(np.array([1, 1, 2])) == 6
    # four equally likely symbols → 2 bits each
    assert huffman_bits(np.array([5, 5, 5, 5])) == 40
    # a single symbol still costs a bit per occurrence
    assert huffman_bits(np.array([0, 7, 0])) == 7


def test_repetitive_bytes_code_small_and_random_bytes_do_not() -> None:
    rng = np.random.default_rng(0)
    skewed = rng.choice(4, size=100_000, p=[0.7, 0.1, 0.1, 0.1]).astype(np.uint8).tobytes()
    uniform = rng.integers(0, 256, size=100_000, dtype=np.uint8).tobytes()
    assert coded_tensor_bytes(skewed) < 0.2 * len(skewed)
    assert coded_tensor_bytes(uniform) > 0.99 * len(uniform)


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_every_variant_stores_its_coded_size(model: str, request: pytest.FixtureRequest) -> None:
    entry: ModelEntry = request.getfixturevalue(model)
    for variant in entry.candidates.values():
        measured = variant.manifest.measurements
        assert measured.coded_bytes == coded_bytes(variant.onnx_path.read_bytes())
        assert measured.coded_bytes is not None and measured.coded_bytes <= measured.size_bytes
