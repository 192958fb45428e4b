"""A user's ONNX model: served as fp32 as given, plus the compressed variants its graph allows.

There are no labels, so quality is fidelity to the fp32 graph on held-out calibration rows
(the last `held_out_fraction` of them; the rest calibrate and choose settings):

- `task: generic` (the default of `slimserve build --onnx`): any graph, its inputs and outputs
  read from it (variants.onnx_graph); quality `fidelity` (repository.fidelity: exact match
  for integer, bool and BYTES outputs, 1 − relative L2 error for float ones, the minimum over
  the outputs); int8, fp16 and int4 where the graph allows and they pay
  (variants.onnx_candidates). Without calibration rows, fp32 is served alone.
- `task: classifier` / `encoder`: one float output scored by top-1 agreement or cosine, and
  int8 (static QDQ for a classifier, dynamic for an encoder), as before generic models.

`variants.build` evaluates a variant by its *first* output on the held-out rows
(`sessions.run_batched`); a generic model's quality covers every output, so this pipeline
measures it here and hands build a scorer that finds each variant's figures by that first
output (`MeasuredScorer`). For a graph with a fixed first dimension N, build is handed the
first N held-out rows (run_batched would feed more); the figures cover every held-out row.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from slimserve.repository.fidelity import METRIC, fidelity
from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError
from slimserve.repository.hardware import threads_for
from slimserve.repository.profile import synthetic_batch
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.evaluate import classifier_scores, encoder_scores
from slimserve.variants.onnx_candidates import KINDS, float_params, make_candidates
from slimserve.variants.onnx_graph import GraphSignature, check_rows_follow_batch, load_rows, read_signature, run_all
from slimserve.variants.pipeline import BuiltVariant, PipelineResult, graph_variant
from slimserve.variants.progress import ModelProgress
from slimserve.variants.quantize import quantize_best
from slimserve.variants.recipes import OnnxRecipe

log = logging.getLogger(__name__)
UNCALIBRATED_ROWS = 2  # synthetic rows that check a batched graph without calibration rows
NO_CALIBRATION = "no calibration rows (--calibration rows.npz): nothing to calibrate it on or measure its fidelity"
FIDELITY_DESCRIPTION = (
    "fidelity to the fp32 graph on held-out calibration rows, the minimum over the outputs: exact-match rate "
    "for integer, bool and BYTES outputs; for float outputs the mean over rows of 1 - min(1, L2 error / the "
    "reference's root-mean-square row norm)"
)


def onnx_pipeline(recipe: OnnxRecipe, progress: ModelProgress | None = None) -> PipelineResult:
    """fp32 is the user's graph; the others are made from it (module docstring). `progress`
    (by default a ModelProgress of the recipe's model) is told each stage."""
    progress = progress or ModelProgress(recipe.name)
    progress.stage("fp32", "load")
    try:
        graph = recipe.path.read_bytes()
        model = onnx.load_from_string(graph)
        onnx.checker.check_model(model)
    except (OSError, DecodeError, onnx.checker.ValidationError) as exc:
        raise RepositoryError(f"{recipe.path}: not a valid ONNX model: {exc}") from exc
    session = make_session(graph, threads=1)
    signature = read_signature(session, recipe.path)
    fp32 = BuiltVariant(
        name="fp32", kind="fp32", onnx=graph, params=float_params(model), macs=None,
        recipe={"source": str(recipe.path)},
    )  # fmt: skip
    progress.stage("fp32", "made")
    if recipe.task == "generic":
        return _generic(recipe, progress, fp32, signature)
    return _scored_by_first_output(recipe, progress, fp32, signature)


def _split(recipe: OnnxRecipe, signature: GraphSignature) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Calibration rows and held-out rows; a fixed graph's counts are whole calls of N rows."""
    assert recipe.calibration is not None
    rows = load_rows(recipe.calibration, signature.inputs)
    step = signature.rows_per_call or 1
    count = len(next(iter(rows.values())))
    cut = int(count * (1 - recipe.held_out_fraction)) // step * step
    end = count // step * step
    if cut < step or cut >= end:
        raise RepositoryError(
            f"{recipe.calibration}: {count} rows are too few to split into calibration and held-out"
            + (f" calls of {step} rows (the graph's fixed first dimension)" if step > 1 else "")
        )
    return {k: v[:cut] for k, v in rows.items()}, {k: v[cut:end] for k, v in rows.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


class MeasuredScorer:
    """build's Scorer for a generic model (module docstring): given a variant's first output
    on build's held-out rows, the fidelity this pipeline measured for that variant over every
    output and every held-out row. Two variants with the same first output but different
    figures: the lower one (never flatter a variant). No match (a session that computed
    differently): fidelity of the first output alone, logged."""

    def __init__(self) -> None:
        self._measured: list[tuple[np.ndarray, dict[str, float], dict[str, float]]] = []

    def add(self, first_output: np.ndarray, quality: float, each: dict[str, float]) -> None:
        agreement = {METRIC: quality, **{f"{METRIC}:{name}": value for name, value in each.items()}}
        self._measured.append((first_output, {METRIC: quality}, agreement))

    def __call__(self, outputs: np.ndarray, reference: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        matches = [(q, a) for first, q, a in self._measured if _same(first, outputs)]
        if matches:
            return min(matches, key=lambda m: m[0][METRIC])
        log.warning("a variant's outputs differ from the build's measurement; fidelity of its first output only")
        quality, _ = fidelity({"first": outputs}, {"first": reference})
        return {METRIC: quality}, {METRIC: quality}


def _generic(
    recipe: OnnxRecipe, progress: ModelProgress, fp32: BuiltVariant, signature: GraphSignature
) -> PipelineResult:
    threads = threads_for("cloud-cpu")
    fixed = signature.fixed_batch
    if fixed is not None:
        # One batch size is all a fixed graph runs: profile that one (build reads the recipe's).
        recipe.profile = recipe.profile.model_copy(update={"batch_sizes": [fixed]})
    variants = [fp32]
    scorer = MeasuredScorer()
    if recipe.calibration is None:
        log.warning("%s: %s; serving fp32 alone (%s would need them)", recipe.name, NO_CALIBRATION,
                    ", ".join(recipe.variants))  # fmt: skip
        skipped: dict[str, str] = {kind: NO_CALIBRATION for kind in recipe.variants}
        held_out = synthetic_batch(signature.inputs, fixed or UNCALIBRATED_ROWS, recipe.profile.seq_len)
        if fixed is None:
            check_rows_follow_batch(make_session(fp32.onnx, 1), held_out, recipe.path)
    else:
        calibration, held_out = _split(recipe, signature)
        reference_session = make_session(fp32.onnx, threads)
        if fixed is None:
            check_rows_follow_batch(reference_session, calibration, recipe.path)
        reference = run_all(reference_session, calibration, fixed)
        reference_held_out = run_all(reference_session, held_out, fixed)

        def selection_score(candidate: bytes) -> float:
            return fidelity(run_all(make_session(candidate, 1), calibration, fixed), reference)[0]

        timing_item = {k: v[: fixed or 1] for k, v in held_out.items()}
        candidates = make_candidates(
            fp32.onnx, recipe, selection_score, calibration, timing_item, threads, progress, fixed
        )
        skipped = candidates.skipped
        for kind, (candidate, made_with) in candidates.made.items():
            variants.append(graph_variant(fp32, kind, KINDS[kind], candidate, made_with))
    build_held_out = held_out if fixed is None else {k: v[:fixed] for k, v in held_out.items()}
    for variant in list(variants):
        session = make_session(variant.onnx, threads)
        if recipe.calibration is None:
            quality, each = 1.0, {spec.name: 1.0 for spec in signature.outputs}
        else:
            quality, each = fidelity(run_all(session, held_out, fixed), reference_held_out)
        log.info("%s/%s: fidelity %.5f (%s)", recipe.name, variant.name, quality,
                 ", ".join(f"{k} {v:.5f}" for k, v in each.items()))  # fmt: skip
        if quality < recipe.min_fidelity:
            skipped[variant.name] = (
                f"fidelity {quality:.4f} on the held-out rows, below min_fidelity {recipe.min_fidelity}"
            )
            log.info("%s: skipped: %s", variant.name, skipped[variant.name])
            variants.remove(variant)
            continue
        scorer.add(run_batched(session, build_held_out), quality, each)
    serving = recipe.serving.model_yaml_fields()
    if fixed is not None:
        serving["max_batch_size"] = fixed  # a request is the graph's N rows; none is merged with another
    return PipelineResult(
        config=ModelConfig(
            name=recipe.name,
            task="generic",
            description=f"user ONNX model {recipe.path.name}",
            inputs=signature.inputs,
            outputs=signature.outputs,
            quality_metric=QualityMetric(name=METRIC, description=FIDELITY_DESCRIPTION),
            skipped_variants=skipped or None,
            **serving,
        ),
        variants=variants,
        held_out=build_held_out,
        labels=None,
        score=scorer,
    )


def _scored_by_first_output(
    recipe: OnnxRecipe, progress: ModelProgress, fp32: BuiltVariant, signature: GraphSignature
) -> PipelineResult:
    """A classifier or encoder: one float output, top-1 agreement or cosine, int8."""
    if signature.fixed_batch is not None:
        raise RepositoryError(
            f"{recipe.path}: the graph fixes its first dimension at {signature.fixed_batch}; a {recipe.task} needs "
            "a batch dimension (or build it with --task generic)"
        )
    if signature.outputs[0].datatype != "FP32":
        raise RepositoryError(
            f"{recipe.path}: a {recipe.task}'s first output must be FP32 scores; {signature.outputs[0].name!r} "
            f"is {signature.outputs[0].datatype} (build it with --task generic)"
        )
    calibration, held_out = _split(recipe, signature)
    session = make_session(fp32.onnx, threads=1)
    reference = run_batched(session, calibration)

    def selection_score(candidate: bytes) -> float:
        outputs = run_batched(make_session(candidate, 1), calibration)
        if recipe.task == "classifier":
            return classifier_scores(outputs, reference.argmax(1), reference)[1]["top1"]
        return encoder_scores(outputs, reference)[0]["cosine"]

    method = recipe.quantization
    if method == "auto":
        method = "static" if recipe.task == "classifier" else "dynamic"
    progress.stage("int8", "int8")
    int8_graph, chosen, scores = quantize_best(
        fp32.onnx,
        selection_score,
        calibration if method == "static" else None,
        timing_item={k: v[:1] for k, v in held_out.items()},
        progress=progress,
    )
    progress.stage("int8", "made")
    int8 = graph_variant(fp32, "int8", "int8", int8_graph, {"method": method, "settings": chosen.label,
                                                           "selection_scores": scores})  # fmt: skip
    metric = "top1_agreement" if recipe.task == "classifier" else "cosine"

    def agreement_score(outputs: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        if recipe.task == "classifier":
            _, agreement = classifier_scores(outputs, ref.argmax(1), ref)
            return {"top1_agreement": agreement["top1"]}, agreement
        return encoder_scores(outputs, ref)

    first = signature.outputs[0]
    return PipelineResult(
        config=ModelConfig(
            name=recipe.name,
            task=recipe.task,
            description=f"user ONNX model {recipe.path.name}",
            inputs=signature.inputs,
            outputs=[first.model_copy(update={"shape": _measured_shape(session, held_out, first.name)})],
            quality_metric=QualityMetric(name=metric, description="fidelity to the fp32 graph on held-out rows"),
            **recipe.serving.model_yaml_fields(),
        ),
        variants=[fp32, int8],
        held_out=held_out,
        labels=None,
        score=agreement_score,
    )


def _measured_shape(session: ort.InferenceSession, held_out: dict[str, np.ndarray], name: str) -> list[int]:
    """A classifier's or encoder's output shape as run (the graph may leave it open)."""
    sample = run_batched(session, {k: v[:1] for k, v in held_out.items()})
    return [-1, *sample.shape[1:]]
