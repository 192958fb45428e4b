"""Variant chains: what a name means, what is built for it, and which recipes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from slimserve.repository.format import RepositoryError
from slimserve.variants.chains import Chain, build_plan, parse_chain
from slimserve.variants.recipes import ClassifierPrune, ClassifierRecipe, EncoderRecipe, ServingSettings, load_recipes


def test_a_chain_name_is_its_steps_in_order() -> None:
    chain = parse_chain("distilled-pruned-int8")
    assert chain.steps == ("distilled", "pruned", "int8")
    assert chain.kind == "int8"
    assert chain.parent.name == "distilled-pruned"
    assert chain.parent.parent.parent.name == "fp32"
    assert parse_chain("fp32") == Chain(())


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("pruned-int9", "unknown step 'int9'"),
        ("int8-pruned", "must come last"),
        ("int8-int4", "must come last"),
        ("qat-pruned", "must come last"),
        ("qat-int8", "must come last"),
        ("pruned-distilled", "must come first"),
        ("pruned-pruned", "appears twice"),
        ("", "unknown step"),
    ],
)
def test_a_chain_that_cannot_be_built_is_refused_with_the_reason(name: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_chain(name)


def test_the_plan_builds_every_parent_first_once() -> None:
    plan = [chain.name for chain in build_plan(["int8", "distilled-pruned-int8", "pruned-int8", "distilled"])]
    assert plan == ["fp32", "int8", "distilled", "distilled-pruned", "distilled-pruned-int8", "pruned", "pruned-int8"]


def test_recipes_refuse_what_their_pipeline_cannot_build() -> None:
    with pytest.raises(ValidationError, match="int4"):
        ClassifierRecipe(name="d", entry_point="m:f", variants=["fp32", "int4"])
    with pytest.raises(ValidationError, match="int8mixed"):
        ClassifierRecipe(name="d", entry_point="m:f", variants=["fp32", "int8mixed"])
    assert EncoderRecipe(variants=["fp32", "pruned", "pruned-int8mixed"]).variants[-1] == "pruned-int8mixed"
    with pytest.raises(ValidationError, match="unknown step"):
        EncoderRecipe(variants=["fp32", "quantized"])
    with pytest.raises(ValidationError, match="listed twice"):
        EncoderRecipe(variants=["fp32", "int8", "int8"])
    with pytest.raises(ValidationError, match="does not build"):
        EncoderRecipe(variants=["fp32", "int8"], serving=ServingSettings(always_serve=["pruned"]))
    with pytest.raises(ValidationError, match="does not end in a pruned step"):
        ClassifierRecipe(name="d", entry_point="m:f", prune_by_chain={"distilled": ClassifierPrune()})


def test_qat_is_a_last_step_on_the_network_of_any_chain() -> None:
    chain = parse_chain("distilled-pruned-qat")
    assert (chain.kind, chain.parent.name, chain.on_graph) == ("qat", "distilled-pruned", False)
    plan = [chain.name for chain in build_plan(["pruned-qat", "pruned-int8"])]
    assert plan == ["fp32", "pruned", "pruned-qat", "pruned-int8"]


def test_the_opt_in_qat_recipe_is_valid() -> None:
    recipes = load_recipes(Path(__file__).parents[2] / "recipes" / "qat.yaml")
    assert {r.name for r in recipes} == {"digits", "minilm"}
    assert all("qat" in r.variants and "int8" in r.variants for r in recipes)  # type: ignore[union-attr]


def test_the_opt_in_candidates_recipe_is_valid() -> None:
    recipes = load_recipes(Path(__file__).parents[2] / "recipes" / "candidates.yaml")
    assert {r.name for r in recipes} == {"digits", "minilm"}
    assert all("lowrank-int8" in r.variants for r in recipes)  # type: ignore[union-attr]


@pytest.mark.parametrize(("file", "layers"), [("fast-minilm.yaml", 4), ("fast-minilm-3layer.yaml", 3)])
def test_the_opt_in_fast_minilm_recipes_are_valid(file: str, layers: int) -> None:
    (recipe,) = load_recipes(Path(__file__).parents[2] / "recipes" / file)
    assert isinstance(recipe, EncoderRecipe)
    assert recipe.train_on_packages and recipe.train_on_libraries == ["torch"] and "distilled-int8" in recipe.variants
    assert len(recipe.distill.keep_layers) == layers


def test_a_recipe_names_only_installed_libraries_to_train_on() -> None:
    assert EncoderRecipe(train_on_libraries=["torch"]).train_on_libraries == ["torch"]
    for name in ("no_such_library_here", "sys", "os.path"):  # missing, built in, a module rather than a package
        with pytest.raises(ValidationError, match=r"are not top-level packages installed here"):
            EncoderRecipe(train_on_libraries=[name])


def test_a_pruning_step_fine_tunes_for_a_fraction_of_an_epoch_and_never_a_negative_one(tmp_path: Path) -> None:
    path = tmp_path / "recipes.yaml"
    path.write_text(
        "- kind: minilm\n  prune:\n    steps:\n      - {heads: 10, ffn: 1152, epochs: 0.25}\n"
        "      - {heads: 8, ffn: 768, epochs: 2}\n"
    )
    (recipe,) = load_recipes(path)
    assert isinstance(recipe, EncoderRecipe)
    assert [step.epochs for step in recipe.prune.steps] == [0.25, 2]
    path.write_text("- kind: minilm\n  prune:\n    steps:\n      - {heads: 10, ffn: 1152, epochs: -0.5}\n")
    with pytest.raises(RepositoryError, match=r"prune\.steps\.0\.epochs': Input should be greater than or equal to 0"):
        load_recipes(path)
