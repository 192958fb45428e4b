"""Stacked variants built end to end: chains of steps, front-only serving, memory, int4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimserve.repository.format import ModelEntry
from slimserve.repository.hardware import fingerprint, threads_for
from slimserve.variants.build import build_model
from slimserve.variants.pareto import dominates, tradeoffs
from slimserve.variants.recipes import EncoderPrune, EncoderPruneStep, EncoderRecipe, ServingSettings
from tests.conftest import QUICK_PROFILE, quick_digits_recipe

CHAINS = ["fp32", "int8", "distilled", "distilled-pruned-int8", "pruned-int8", "lowrank-int8"]
MAX_SERVED = 3  # fewer than the front can hold, so some variants are always left out


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> ModelEntry:
    recipe = quick_digits_recipe().model_copy(
        update={
            "variants": CHAINS,
            "serving": ServingSettings(
                default_slo_ms=20.0, serve="front", always_serve=["int8"], max_served_variants=MAX_SERVED
            ),
        }
    )
    return build_model(recipe, tmp_path_factory.mktemp("stacked"))


def test_each_chain_is_built_from_its_parent(stacked: ModelEntry) -> None:
    manifests = {name: v.manifest for name, v in stacked.candidates.items()}
    assert set(manifests) == set(CHAINS)  # parents not asked for (pruned, lowrank, …) are not published
    assert (manifests["distilled-pruned-int8"].kind, manifests["distilled-pruned-int8"].source) == (
        "int8",
        "distilled-pruned",
    )
    assert manifests["pruned-int8"].source == "pruned"
    assert manifests["distilled-pruned-int8"].measurements.params < manifests["distilled"].measurements.params
    assert manifests["lowrank-int8"].recipe["method"] == "static QDQ"


def test_only_the_front_and_the_promised_variants_are_served(stacked: ModelEntry) -> None:
    key = fingerprint(threads_for("cloud-cpu")).key
    manifests = {name: v.manifest for name, v in stacked.candidates.items()}
    places = {t.name: t for t in tradeoffs(manifests, "accuracy", key)}
    # The reference first; int8 (promised) anywhere after it: `variants` is in kind and name order,
    # and a front member of kind int8 named before it (distilled-pruned-int8) comes first.
    assert next(iter(stacked.variants)) == "fp32" and "int8" in stacked.variants
    assert len(stacked.variants) == MAX_SERVED
    (third,) = set(stacked.variants) - {"fp32", "int8"}
    assert not any(dominates(places[other], places[third]) for other in places)
    on_front_left_out = [
        name
        for name in set(stacked.candidates) - set(stacked.variants)
        if not any(dominates(places[other], places[name]) for other in places)
    ]
    # what the cap left out of the front is less accurate than what it kept
    assert all(places[name].quality <= places[third].quality for name in on_front_left_out)


def test_every_variant_knows_its_memory(stacked: ModelEntry) -> None:
    memory = {name: v.manifest.measurements.session_rss_bytes for name, v in stacked.candidates.items()}
    assert all(m is not None and m > 0 for m in memory.values())
    assert memory["fp32"] > memory["distilled-pruned-int8"]  # type: ignore[operator]


def test_minilm_int4_is_a_quarter_of_int8_size_within_its_quality_budget(tmp_path: Path) -> None:
    """And int8mixed, built in the same pipeline run: smoothed, block-quantized where the
    selection cosine needs it, and close to its parent."""
    recipe = EncoderRecipe(
        variants=["fp32", "int4", "int8mixed"],
        train_sentences=64,
        eval_sentences=24,
        selection_sentences=16,
        max_tokens=32,
        prune=EncoderPrune(steps=[EncoderPruneStep(heads=8, ffn=1024)]),
        profile=QUICK_PROFILE,
    )
    entry = build_model(recipe, tmp_path)
    int4 = entry.variants["int4"].manifest
    fp32 = entry.variants["fp32"].manifest
    assert int4.kind == "int4" and int4.source == "fp32"
    assert int4.measurements.size_bytes < fp32.measurements.size_bytes / 5
    chosen = int4.recipe
    assert chosen["selection_score"] >= 1 - recipe.int4.max_cosine_drop or len(chosen["matmuls_at_8_bits"]) == 36
    assert int4.measurements.quality["cosine"] > 0.9
    mixed = entry.candidates["int8mixed"].manifest
    assert mixed.kind == "int8mixed" and mixed.source == "fp32" and mixed.recipe["settings"]["alpha"] == 0.8
    # int8 weights and embeddings; the roles made precise stay 8-bit in the block kernel, or
    # float where that kernel is the slower (an AVX2-only CPU: variants.int8mixed)
    kept_float = set(mixed.recipe["settings"]["by_role"].values()) == {"float"}
    assert mixed.measurements.size_bytes < fp32.measurements.size_bytes / (2 if kept_float else 3)
    assert mixed.measurements.quality["cosine"] > 0.99


def test_the_server_serves_the_served_set_and_names_the_rest_as_unknown(stacked: ModelEntry, tmp_path: Path) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from loadtest.serving import RunningServer

    running = RunningServer(stacked.path.parent, tmp_path)
    try:
        with triton.InferenceServerClient(running.address) as client:
            assert client.get_model_metadata("digits", as_json=True)["versions"] == list(stacked.variants)
            unserved = sorted(set(stacked.candidates) - set(stacked.variants))[0]
            images = np.zeros((1, 1, 28, 28), dtype=np.float32)
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            with pytest.raises(InferenceServerException, match=unserved):
                client.infer("digits", [tensor], model_version=unserved)
    finally:
        assert running.stop() == 0
