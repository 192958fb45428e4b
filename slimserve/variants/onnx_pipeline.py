"""A user's ONNX model: served as fp32 as given, plus an int8 variant quantized from it.

There are no labels, so quality is fidelity to the fp32 graph on held-out calibration rows
(top-1 agreement for classifiers, cosine for encoders), the same measure the built-in
encoder uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError, TensorSpec
from slimserve.repository.hardware import threads_for
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.evaluate import classifier_scores, encoder_scores
from slimserve.variants.pipeline import BuiltVariant, PipelineResult, datatype_of, graph_variant
from slimserve.variants.progress import ModelProgress
from slimserve.variants.quantize import quantize_best
from slimserve.variants.recipes import OnnxRecipe


def _load_rows(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path}: cannot read calibration data: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if len(input_names) != 1:
            raise RepositoryError(f"{path}: the model has inputs {input_names}; give an .npz with one array each")
        return {input_names[0]: loaded}
    missing = [name for name in input_names if name not in loaded.files]
    if missing:
        raise RepositoryError(f"{path}: no array for input(s) {missing} (found {loaded.files})")
    return {name: loaded[name] for name in input_names}


def _float_params(model: onnx.ModelProto) -> int:
    return sum(
        int(np.prod(numpy_helper.to_array(t).shape))
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    )


def onnx_pipeline(recipe: OnnxRecipe, progress: ModelProgress | None = None) -> PipelineResult:
    """fp32 is the user's graph; int8 is quantized from it. `progress` (by default a
    ModelProgress of the recipe's model) is told each stage and the int8 candidates."""
    progress = progress or ModelProgress(recipe.name)
    progress.stage("fp32", "load")
    try:
        graph = recipe.path.read_bytes()
        model = onnx.load_from_string(graph)
        onnx.checker.check_model(model)
    except (OSError, DecodeError, onnx.checker.ValidationError) as exc:
        raise RepositoryError(f"{recipe.path}: not a valid ONNX model: {exc}") from exc
    session = make_session(graph, threads=1)
    input_names = [i.name for i in session.get_inputs()]
    rows = _load_rows(recipe.calibration, input_names)
    count = len(next(iter(rows.values())))
    cut = int(count * (1 - recipe.held_out_fraction))
    if cut < 1 or cut >= count:
        raise RepositoryError(f"{recipe.calibration}: {count} rows are too few to split into calibration and held-out")
    calibration = {k: v[:cut] for k, v in rows.items()}
    held_out = {k: v[cut:] for k, v in rows.items()}
    reference = run_batched(session, calibration)

    def selection_score(candidate: bytes) -> float:
        outputs = run_batched(make_session(candidate, 1), calibration)
        if recipe.task == "classifier":
            return classifier_scores(outputs, reference.argmax(1), reference)[1]["top1"]
        return encoder_scores(outputs, reference)[0]["cosine"]

    params = _float_params(model)
    fp32 = BuiltVariant(
        name="fp32", kind="fp32", onnx=graph, params=params, macs=None, recipe={"source": str(recipe.path)}
    )
    progress.stage("fp32", "made")
    progress.stage("int8", "int8")
    int8_graph, chosen, scores = quantize_best(
        graph,
        selection_score,
        calibration if recipe.quantization == "static" else None,
        timing_item={k: v[:1] for k, v in held_out.items()},
        threads=threads_for("cloud-cpu"),
        progress=progress,
    )
    progress.stage("int8", "made")
    int8 = graph_variant(
        fp32,
        "int8",
        "int8",
        int8_graph,
        {"method": recipe.quantization, "settings": chosen.label, "selection_scores": scores},
    )
    output = session.get_outputs()[0]
    sample_out = run_batched(session, {k: v[:1] for k, v in held_out.items()})
    metric = "top1_agreement" if recipe.task == "classifier" else "cosine"

    def agreement_score(outputs: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        if recipe.task == "classifier":
            _, agreement = classifier_scores(outputs, ref.argmax(1), ref)
            return {"top1_agreement": agreement["top1"]}, agreement
        return encoder_scores(outputs, ref)

    return PipelineResult(
        config=ModelConfig(
            name=recipe.name,
            task=recipe.task,
            description=f"user ONNX model {recipe.path.name}",
            inputs=[TensorSpec(name=k, datatype=datatype_of(v), shape=[-1, *v.shape[1:]]) for k, v in held_out.items()],
            outputs=[TensorSpec(name=output.name, datatype="FP32", shape=[-1, *sample_out.shape[1:]])],
            quality_metric=QualityMetric(name=metric, description="fidelity to the fp32 graph on held-out rows"),
            **recipe.serving.model_yaml_fields(),
        ),
        variants=[fp32, int8],
        held_out=held_out,
        labels=None,
        score=agreement_score,
    )
