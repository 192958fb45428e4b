"""A model with narrow integer inputs and unbounded dimensions, and a real server for it.

`narrow` takes `codes` (INT8) and `levels` (UINT8), both [-1, -1] with no `max_shape`, as a
user's model.yaml may declare them, and returns `total` = the row sums of codes + levels,
[-1, 1] FP32. It is what the codec's narrow-type and element-count checks face: typed
contents travel as int32/uint32, and a shape such as [4, 2**62] is accepted dimension by
dimension.

The repository is written by hand, with a profile measured here on the right dtypes:
start-up profiling and warm-up feed float32 to every input that is not INT32 or INT64
(`repository.profile.synthetic_batch`), which this graph cannot run. So its server starts
with the profile already stored for SESSION_THREADS threads, and without warm-up calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from slimserve.repository.format import (
    Measurements,
    ModelConfig,
    QualityMetric,
    SeedFormulas,
    TensorSpec,
    VariantManifest,
    now,
    sha256_of,
    write_model_config,
    write_variant,
)
from slimserve.repository.hardware import fingerprint
from slimserve.repository.profile import build_profiles, profile_sessions
from slimserve.repository.sessions import make_session

MODEL = "narrow"
SESSION_THREADS = 1
PROFILE_BATCH_SIZES = [1, 8]
PROFILE_SECONDS_PER_BATCH_SIZE = 0.05
# What a server of a repository holding `narrow` needs (module docstring).
SERVER_ENV = {
    "SLIMSERVE_SESSION_THREADS": str(SESSION_THREADS),
    "SLIMSERVE_WARMUP_CALLS": "0",
    "SLIMSERVE_SHADOW_FRACTION": "0",
}


def _graph() -> bytes:
    dims = ["batch", "items"]
    nodes = [
        helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["levels"], ["levels_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["codes_f", "levels_f"], ["sum"]),
        helper.make_node("ReduceSum", ["sum", "axis"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [
            helper.make_tensor_value_info("codes", TensorProto.INT8, dims),
            helper.make_tensor_value_info("levels", TensorProto.UINT8, dims),
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _feed(batch: int) -> dict[str, np.ndarray]:
    return {"codes": np.full((batch, 4), -3, np.int8), "levels": np.full((batch, 4), 200, np.uint8)}


def write_narrow_model(repository: Path) -> Path:
    """Write `narrow` into `repository` (module docstring) and return its folder."""
    graph = _graph()
    config = ModelConfig(
        name=MODEL,
        task="encoder",
        description="row sums of an INT8 and a UINT8 input (a test model)",
        inputs=[
            TensorSpec(name="codes", datatype="INT8", shape=[-1, -1]),
            TensorSpec(name="levels", datatype="UINT8", shape=[-1, -1]),
        ],
        outputs=[TensorSpec(name="total", datatype="FP32", shape=[-1, 1])],
        quality_metric=QualityMetric(name="cosine", description="fidelity to itself"),
        default_slo_ms=1000.0,
    )
    latencies = profile_sessions(
        {"fp32": make_session(graph, SESSION_THREADS)}, _feed, PROFILE_BATCH_SIZES, PROFILE_SECONDS_PER_BATCH_SIZE
    )
    profiles = build_profiles(latencies, "fp32", "cloud-cpu", fingerprint(SESSION_THREADS), "4 items per row")
    manifest = VariantManifest(
        name="fp32",
        kind="fp32",
        measurements=Measurements(
            params=0, size_bytes=len(graph), quality={"cosine": 1.0}, agreement={"cosine": 1.0}, eval_items=1
        ),
        seed_formulas=SeedFormulas(alpha_params=1.0, beta_params=0.0, alpha_bytes=1.0, beta_bytes=0.0),
        profiles={profile.hardware.key: profile for profile in profiles.values()},
        onnx_sha256=sha256_of(graph),
        built_at=now(),
    )
    model_dir = repository / MODEL
    write_model_config(model_dir, config)
    write_variant(model_dir, manifest, graph)
    return model_dir
