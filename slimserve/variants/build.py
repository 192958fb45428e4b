"""`slimserve build`: run a recipe's pipeline, measure every variant, publish the model.

The steps: the pipeline trains and compresses (fp32, int8, pruned, distilled and the
recipe's chains of them); every variant's ONNX graph is evaluated on the held-out set with
ONNX Runtime (what is served is what is measured); all variants are profiled side by side;
each one's Huffman-coded size and session memory are measured (a staged build measures each
graph once: GraphMeasures); the final publication decides which are served (recipe
`serving.serve`); the model is written into a staging folder and renamed into the repository
in one step. Each model has one `ModelProgress` (variants.progress) that logs its stages,
steps, epochs and estimates in one parseable line format (the server's background build
reports them); tqdm bars are for terminals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slimserve.repository.format import (
    MODEL_FILE,
    Measurements,
    ModelEntry,
    SeedFormulas,
    VariantManifest,
    load_model,
    load_model_config,
    now,
    publish_model,
    sha256_of,
    staging_dir,
    update_manifest,
    version_numbers_kept,
    write_model_config,
    write_variant,
)
from slimserve.repository.hardware import HardwareTarget, fingerprint, pin_to_one_core, threads_for
from slimserve.repository.profile import ProfileSettings, profile_variants, synthetic_batch
from slimserve.variants.classifier_pipeline import checked_spec, classifier_stages
from slimserve.variants.coded_size import coded_bytes
from slimserve.variants.encoder_pipeline import encoder_stages
from slimserve.variants.memory import session_rss_bytes
from slimserve.variants.model_pipeline import model_stages
from slimserve.variants.onnx_pipeline import onnx_pipeline
from slimserve.variants.pareto import served_set
from slimserve.variants.pipeline import PipelineResult, last_stage
from slimserve.variants.progress import ModelProgress
from slimserve.variants.recipes import AnyRecipe, ClassifierRecipe, EncoderRecipe, ModelRecipe, planned_variants
from slimserve.variants.spec import ModelSpec
from slimserve.variants.torch_steps import load_entry_point

log = logging.getLogger(__name__)
FIRST_STAGE_PROFILE_S = 0.3  # per batch size, for the first stage's brief profile
ProgressFor = Callable[[str], ModelProgress]  # a model's name → its progress reporter


@dataclass(frozen=True)
class GraphMeasures:
    """What publishing measures of one graph that no later publication of the same build can
    change: its held-out outputs, Huffman-coded size and session memory. A staged build keeps
    them by graph hash, so the final publication does not run again what the first one ran."""

    outputs: np.ndarray
    coded_bytes: int
    session_rss_bytes: int


def pipeline_stages(recipe: AnyRecipe, progress: ModelProgress) -> Iterator[PipelineResult]:
    """The recipe's pipeline, stage by stage (variants.pipeline.FIRST_STAGE first).

    A torch entry point (`--entry-point`, `kind: torch-classifier`) is called once here, and
    what it returns picks the pipeline: a ModelSpec runs the torch-model pipeline with the
    recipe's shared settings, anything else the classifier's (which checks it)."""
    if isinstance(recipe, ClassifierRecipe):
        spec = load_entry_point(recipe.entry_point)
        if isinstance(spec, ModelSpec):
            yield from model_stages(ModelRecipe.from_classifier(recipe), progress, spec)
        else:
            yield from classifier_stages(recipe, progress, checked_spec(recipe.entry_point, spec))
    elif isinstance(recipe, ModelRecipe):
        yield from model_stages(recipe, progress)
    elif isinstance(recipe, EncoderRecipe):
        yield from encoder_stages(recipe, progress)
    else:
        yield onnx_pipeline(recipe, progress)


def run_pipeline(recipe: AnyRecipe, progress: ModelProgress) -> PipelineResult:
    return last_stage(pipeline_stages(recipe, progress))


def build_model(recipe: AnyRecipe, repo: Path, progress_for: ProgressFor = ModelProgress) -> ModelEntry:
    """Build, measure and publish one model; returns it as loaded back from disk.

    Profiles are taken as `cloud-cpu` (every usable core); `slimserve profile
    --hardware-profile edge` adds the one-core profile afterwards.
    """
    started = time.monotonic()
    progress = progress_for(recipe.name)
    entry = publish(recipe, repo, run_pipeline(recipe, progress), recipe.profile, final=True, progress=progress)
    log.info("built %s in %.0f s", recipe.name, time.monotonic() - started)
    return entry


def build_staged(
    recipes: list[AnyRecipe], repo: Path, progress_for: ProgressFor = ModelProgress
) -> dict[str, ModelEntry]:
    """Build every recipe stage by stage, all models' first stage (fp32, int8) before any
    model's second: a server polling the repository can answer within minutes and gains
    the other variants as they are published. The first stage is profiled briefly
    (FIRST_STAGE_PROFILE_S per batch size); the last publication profiles every variant
    side by side with the recipe's settings and replaces it (same graphs, same hashes)."""
    started = time.monotonic()
    reporters = {recipe.name: progress_for(recipe.name) for recipe in recipes}
    running = {recipe.name: (recipe, pipeline_stages(recipe, reporters[recipe.name])) for recipe in recipes}
    measured: dict[str, dict[str, GraphMeasures]] = {recipe.name: {} for recipe in recipes}
    entries: dict[str, ModelEntry] = {}
    while running:
        for name, (recipe, stages) in list(running.items()):
            result = next(stages, None)
            if result is None:
                del running[name]
                continue
            built = [v.name for v in result.variants]
            to_come = [v for v in planned_variants(recipe) if v not in built]
            final = not to_come
            settings = recipe.profile if final else recipe.profile.model_copy(
                update={"seconds_per_batch_size": FIRST_STAGE_PROFILE_S}
            )  # fmt: skip
            entries[name] = publish(recipe, repo, result, settings, final=final, progress=reporters[name],
                                    measured=measured[name])  # fmt: skip
            log.info("%s: published %s after %.0f s%s", name, ", ".join(built), time.monotonic() - started,
                     f"; still building {', '.join(to_come)}" if to_come else "")  # fmt: skip
    return entries


def publish(
    recipe: AnyRecipe,
    repo: Path,
    result: PipelineResult,
    settings: ProfileSettings,
    final: bool,
    progress: ModelProgress,
    measured: dict[str, GraphMeasures] | None = None,
) -> ModelEntry:
    """Evaluate, profile and measure `result`'s variants, and publish them as the model, in
    one rename. The final publication also decides the served set (recipe `serving.serve`).
    `progress` is told each stage; profiling's estimate is its budget (batch sizes × seconds
    per batch size; a slow model's minimum repetitions can take longer). `measured` (by graph
    hash; filled here) holds what an earlier publication of the same build measured: profiles
    are taken again, since the final publication's settings are the recipe's."""
    reference = result.variants[0]
    names = [v.name for v in result.variants]
    threads = threads_for("cloud-cpu")
    hashes = {v.name: sha256_of(v.onnx) for v in result.variants}
    full_batch = synthetic_batch(result.config.inputs, result.config.max_batch_size, settings.seq_len)
    measured = {} if measured is None else measured
    progress.stage(names, "evaluate")
    for variant in result.variants:
        if hashes[variant.name] not in measured:
            measured[hashes[variant.name]] = GraphMeasures(
                outputs=result.run(variant.onnx, result.held_out, threads),
                coded_bytes=coded_bytes(variant.onnx),
                session_rss_bytes=session_rss_bytes(variant.onnx, full_batch, threads),
            )
    progress.stage(names, "profile", budget_s=len(settings.batch_sizes) * settings.seconds_per_batch_size)
    profiles = profile_variants({v.name: v.onnx for v in result.variants}, result.config, settings, "cloud-cpu")
    staged = staging_dir(repo, recipe.name)
    built_at = now()
    manifests: dict[str, VariantManifest] = {}
    progress.stage(names, "measure")
    progress.loop(len(result.variants), unit="graph")
    for variant in tqdm(result.variants, desc=f"{recipe.name}: measure", unit="variant", leave=False):
        measures = measured[hashes[variant.name]]
        quality, agreement = result.score(measures.outputs, measured[hashes[reference.name]].outputs)
        profile = profiles[variant.name]
        manifests[variant.name] = VariantManifest(
            name=variant.name,
            kind=variant.kind,
            source=variant.source,
            recipe=variant.recipe,
            architecture=variant.architecture,
            measurements=Measurements(
                params=variant.params,
                macs=variant.macs,
                size_bytes=len(variant.onnx),
                quality=quality,
                agreement=agreement,
                export_max_abs_diff=variant.export_max_abs_diff,
                eval_items=len(measures.outputs),
                coded_bytes=measures.coded_bytes,
                session_rss_bytes=measures.session_rss_bytes,
            ),
            seed_formulas=SeedFormulas.of(reference.params, variant.params, len(reference.onnx), len(variant.onnx)),
            profiles={profile.hardware.key: profile},
            onnx_sha256=hashes[variant.name],
            built_at=built_at,
        )
        write_variant(staged, manifests[variant.name], variant.onnx)
        progress.tick()
    # A variant keeps the version number it was first published with (format.ModelConfig).
    published = repo / recipe.name / MODEL_FILE
    previous = load_model_config(published) if published.exists() else None
    numbers = version_numbers_kept(previous.version_numbers if previous else None, names)
    config = result.config.model_copy(update={"version_numbers": numbers})
    serving = recipe.serving
    if final and serving.serve == "front":
        key = fingerprint(threads).key
        served = served_set(manifests, config.quality_metric.name, key, reference.name, serving.always_serve,
                            serving.max_served_variants)  # fmt: skip
        config = config.model_copy(update={"served_variants": served})
    write_model_config(staged, config)
    publish_model(staged, repo, recipe.name)
    progress.stage(names, "published")
    return load_model(repo / recipe.name)


def reprofile(entry: ModelEntry, settings: ProfileSettings, target: HardwareTarget) -> ModelEntry:
    """Add (or replace) this machine's profile for `target` in every variant of a built model,
    served or not (the Pareto front of `target` is drawn over all of them)."""
    if target == "edge":
        pin_to_one_core()
    graphs = {name: v.onnx_path.read_bytes() for name, v in entry.candidates.items()}
    profiles = profile_variants(graphs, entry.config, settings, target)
    for name, variant in entry.candidates.items():
        manifest = variant.manifest
        manifest.profiles[profiles[name].hardware.key] = profiles[name]
        update_manifest(variant.onnx_path.parent, manifest)
    return load_model(entry.path)
