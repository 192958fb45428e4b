"""A model's configuration in Triton's `ModelConfig` form, for Triton's own clients.

`perf_analyzer` and `tritonclient.get_model_config` ask for it before anything else: how
large a batch may be, each tensor's type and its dims *without* the batch dimension (the
v2 metadata's shapes include it), and whether the server batches dynamically. slimserve
batches every variant (`core/batcher.py`) up to `max_batch_size`, waiting at most
`max_queue_delay_ms` for a batch to fill.

Triton's versions are integers: each variant also answers to a number (`core.versions`).
The version policy lists the served variants' numbers, and the `variants` parameter says
which name each stands for ("distilled=1,fp32=4").
"""

from __future__ import annotations

from collections.abc import Sequence

from slimserve.protos import inference_pb2 as pb
from slimserve.repository.format import ModelEntry, TensorSpec
from slimserve.server.core.versions import version_numbers

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
_DATA_TYPE = {
    "BOOL": pb.TYPE_BOOL, "UINT8": pb.TYPE_UINT8, "INT8": pb.TYPE_INT8, "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64, "FP16": pb.TYPE_FP16, "FP32": pb.TYPE_FP32,
}  # fmt: skip  # every Datatype model.yaml accepts


def _dims(tensor: TensorSpec) -> list[int]:
    return tensor.shape[1:]  # every slimserve tensor is batched: the first dimension is the batch


def triton_model_config(entry: ModelEntry, served: Sequence[str]) -> pb.ModelConfig:
    """`entry`'s model.yaml as Triton's ModelConfig message, serving the variants `served`."""
    config = entry.config
    numbers = version_numbers(entry)
    in_order = sorted(served, key=numbers.__getitem__)
    return pb.ModelConfig(
        name=config.name,
        platform=PLATFORM,
        backend=BACKEND,
        version_policy=pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=[numbers[n] for n in in_order])
        ),
        max_batch_size=config.max_batch_size,
        input=[pb.ModelInput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=_dims(t)) for t in config.inputs],
        output=[pb.ModelOutput(name=t.name, data_type=_DATA_TYPE[t.datatype], dims=_dims(t)) for t in config.outputs],
        instance_group=[pb.ModelInstanceGroup(name=config.name, count=1, kind=pb.ModelInstanceGroup.KIND_CPU)],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=round(config.max_queue_delay_ms * 1000)),
        parameters={
            "variants": pb.ModelParameter(
                string_value=",".join(f"{name}={numbers[name]}" for name in sorted(served, key=numbers.__getitem__))
            )
        },
    )
