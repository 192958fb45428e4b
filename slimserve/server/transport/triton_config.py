"""A model's configuration in Triton's `ModelConfig` form, for Triton's own clients.

`perf_analyzer` and `tritonclient.get_model_config` ask for it before anything else: how
large a batch may be, each tensor's type and its dims *without* the batch dimension (the
v2 metadata's shapes include it), and whether the server batches dynamically. slimserve
batches every variant (`core/batcher.py`) up to `max_batch_size`, waiting at most
`max_queue_delay_ms` for a batch to fill.

A graph that fixes its first dimension at N (`variants.onnx_graph`: a request is exactly N
rows, never merged with another) is what Triton calls a model with `max_batch_size` 0: its
config says 0, its dims are the whole shape (N included, as ModelMetadata's shapes are), and
it has no dynamic batching; so perf_analyzer and tritonclient send the N rows the codec accepts
(`codec._check_shape`), not a batch of 1 of a shape without the first dimension.

Triton's versions are integers: each variant also answers to a number (`core.versions`).
The version policy lists the served variants' numbers, and the `variants` parameter says
which name each stands for ("distilled=1,fp32=4").
"""

from __future__ import annotations

from collections.abc import Sequence

from slimserve.protos import inference_pb2 as pb
from slimserve.repository.format import ModelConfig, ModelEntry, TensorSpec
from slimserve.server.core.versions import version_numbers

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Every Datatype model.yaml accepts (format.DATATYPE_DTYPES), by Triton's DataType name:
# Triton spells BYTES as TYPE_STRING in a model config.
_DATA_TYPE = {
    "BOOL": pb.TYPE_BOOL, "UINT8": pb.TYPE_UINT8, "UINT16": pb.TYPE_UINT16, "UINT32": pb.TYPE_UINT32,
    "UINT64": pb.TYPE_UINT64, "INT8": pb.TYPE_INT8, "INT16": pb.TYPE_INT16, "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64, "FP16": pb.TYPE_FP16, "FP32": pb.TYPE_FP32, "FP64": pb.TYPE_FP64,
    "BYTES": pb.TYPE_STRING,
}  # fmt: skip


def batches(config: ModelConfig) -> bool:
    """Whether requests are merged along the first dimension: False for a graph that fixes it
    (module docstring), which Triton would configure with max_batch_size 0."""
    return all(spec.shape[0] == -1 for spec in config.inputs)


def _dims(tensor: TensorSpec, batched: bool) -> list[int]:
    # Batched: Triton's dims leave out the batch dimension; fixed: they are the whole shape.
    return tensor.shape[1:] if batched else tensor.shape


def triton_model_config(entry: ModelEntry, served: Sequence[str]) -> pb.ModelConfig:
    """`entry`'s model.yaml as Triton's ModelConfig message, serving the variants `served`."""
    config = entry.config
    numbers = version_numbers(entry)
    in_order = sorted(served, key=numbers.__getitem__)
    batched = batches(config)
    queue_delay_us = round(config.max_queue_delay_ms * 1000)
    return pb.ModelConfig(
        name=config.name,
        platform=PLATFORM,
        backend=BACKEND,
        version_policy=pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=[numbers[n] for n in in_order])
        ),
        max_batch_size=config.max_batch_size if batched else 0,
        input=[
            pb.ModelInput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=_dims(t, batched)) for t in config.inputs
        ],
        output=[
            pb.ModelOutput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=_dims(t, batched))
            for t in config.outputs
        ],
        instance_group=[pb.ModelInstanceGroup(name=config.name, count=1, kind=pb.ModelInstanceGroup.KIND_CPU)],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us) if batched else None,
        parameters={"variants": pb.ModelParameter(string_value=",".join(f"{n}={numbers[n]}" for n in in_order))},
    )
