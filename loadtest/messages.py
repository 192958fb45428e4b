"""The ModelInferRequest messages that tests, benchmarks and Locust users send.

One builder, so that every client puts tensors on the wire the same way: each input in
`raw_input_contents` (C order, the array's own bytes; a BYTES tensor — a numpy object or
`bytes_` array — serialized as tritonclient does, each element a 4-byte little-endian length
and its bytes), its datatype from the array's dtype by tritonclient's own table
(`np_to_triton_dtype`: every Open Inference Protocol datatype), `slo_ms` as a double
parameter. Messages are tritonclient's (`service_pb2`), the stubs a user of the Open Inference
Protocol has; they cannot share a process with the server's own generated module (both define
`inference.*`), and the bytes are the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

DIGITS_SHAPE = (1, 28, 28)  # one row of `digits`: a 28×28 grey image, one channel


def datatype(name: str, array: np.ndarray) -> str:
    """The Open Inference Protocol datatype of `array` (the input `name`'s), as tritonclient
    names it; ValueError naming the input for a dtype no datatype carries."""
    found = np_to_triton_dtype(array.dtype)
    if found is None:
        raise ValueError(
            f"input {name!r}: dtype {array.dtype} has no Open Inference Protocol datatype "
            "(text goes in a numpy object array of str or bytes: BYTES)"
        )
    return str(found)


def tensor_bytes(array: np.ndarray) -> bytes:
    """`array` as raw contents: its own bytes in C order, or serialized for BYTES (module docstring)."""
    if np_to_triton_dtype(array.dtype) == "BYTES":
        serialized = serialize_byte_tensor(array)
        return bytes(serialized.item()) if serialized.size else b""
    return np.ascontiguousarray(array).tobytes()


def triton_inputs(inputs: Mapping[str, np.ndarray]) -> list[triton.InferInput]:
    """`inputs` (name → array, in the model's input order) as tritonclient's InferInputs, for
    `InferenceServerClient.infer`: the same datatypes as `infer_request`."""
    tensors = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), datatype(name, array))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    variant: str = "",
    request_id: str = "",
    slo_ms: float | None = None,
) -> pb.ModelInferRequest:
    """A request for `model` with `inputs` (name → array, in the model's input order).

    `variant` empty lets the router choose; `slo_ms` None sends no SLO of its own."""
    request = pb.ModelInferRequest(model_name=model, model_version=variant, id=request_id)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype(name, array), shape=list(array.shape))
        request.raw_input_contents.append(tensor_bytes(array))
    if slo_ms is not None:
        request.parameters["slo_ms"].double_param = slo_ms
    return request


def digits_request(
    images: np.ndarray | None = None,
    *,
    rows: int = 1,
    variant: str = "",
    request_id: str = "",
    slo_ms: float | None = None,
) -> pb.ModelInferRequest:
    """A `digits` request: `images` (rows × 1 × 28 × 28, float32), or `rows` blank images."""
    if images is None:
        images = np.zeros((rows, *DIGITS_SHAPE), np.float32)
    return infer_request("digits", {"images": images}, variant=variant, request_id=request_id, slo_ms=slo_ms)


MINILM_INPUTS = ("input_ids", "attention_mask")


def minilm_request(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    variant: str = "",
    request_id: str = "",
    slo_ms: float | None = None,
) -> pb.ModelInferRequest:
    """A `minilm` request: token ids (rows × tokens, int64) and their mask (default: all ones)."""
    mask = np.ones_like(input_ids) if attention_mask is None else attention_mask
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    return infer_request("minilm", inputs, variant=variant, request_id=request_id, slo_ms=slo_ms)
