"""Protobuf ↔ internal types for the Open Inference Protocol (the only place that does it).

Inputs arrive either all as `raw_input_contents` (one bytes blob per input, in order) or
all as typed `contents`; mixing is refused. Every check names the tensor and says what was
expected, so a caller can fix the request without reading server logs.

Everything a caller controls is bounded here, before any work: the request id, the number
and size of parameters, typed contents (converted on the event loop, so above
MAX_TYPED_VALUES they are refused in favour of raw contents), and each input's declared
shape limits and value range (`TensorSpec.max_shape`, `min_value`, `max_value`).

BYTES tensors travel as Triton serializes them (tritonclient.utils.serialize_byte_tensor):
in raw contents, each element is a 4-byte little-endian length followed by that many bytes,
elements in row-major order; in typed contents, one `bytes_contents` entry per element.
They become numpy object arrays of `str`: ONNX Runtime's string tensors hold text (it would
turn a `bytes` element into its repr), so each element must be UTF-8 and is decoded here;
string outputs are encoded back the same way, as UTF-8. A BYTES input is bounded by its
element count (MAX_BYTES_ELEMENTS: parsing walks the elements on the event loop) and its
total length (MAX_BYTES_TOTAL_BYTES); a length prefix that runs past the end, or bytes left
over after the last element, is refused naming the input and the element.

Shared memory (transport.shared_memory). An input whose parameters name a
`shared_memory_region` (with `shared_memory_byte_size` and optionally `shared_memory_offset`)
is read from that region of the caller's instead of the request: it carries no contents, and
`raw_input_contents` then holds one entry per input *not* in shared memory, in order (as
tritonclient sends them). Its byte size must be the tensor's (for BYTES: its serialized length,
at most MAX_BYTES_TOTAL_BYTES), checked before a byte is copied out; the bytes are copied when
the request is decoded, so nothing refers to the mapping afterwards. A requested output with
those parameters is written into its region when the response is encoded (after checking it
fits), and its `raw_output_contents` entry is empty, so that the entries still line up with
`outputs` (tritonclient reads each output's contents by its position).

Sizes are Python ints: a shape's element count is exact however large its dimensions (a
numpy product wraps around, and [4, 2**62] would claim to hold no element), and it must
match the bytes or values the request carries. Typed contents travel in a wider field than
INT8 or UINT8 (int32, uint32), so each value is checked against its datatype's range before
it is narrowed. Names and lists the caller sent are quoted through `errors.shown`/`listed`.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from slimserve.protos import inference_pb2 as pb
from slimserve.repository.format import DATATYPE_DTYPES, ModelConfig, TensorSpec
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.errors import InvalidInputError, listed, shown
from slimserve.server.transport.parameters import parameter_value
from slimserve.server.transport.shared_memory import CallerRegions, Slot

# BYTES: each element a `str` (module docstring)
DTYPES: dict[str, np.dtype] = {name: np.dtype(numpy_type) for name, numpy_type in DATATYPE_DTYPES.items()}
MAX_ID_CHARS = 256  # request ids are remembered for Feedback: bounded in bytes
MAX_PARAMETERS = 32
MAX_PARAMETER_NAME_CHARS = 64
MAX_PARAMETER_STRING_CHARS = 1024
MAX_TYPED_VALUES = 65_536  # 2.8 ms of conversion on the event loop (AMD EPYC); raw bytes beyond
MAX_BYTES_ELEMENTS = 65_536  # strings in one BYTES input: each is parsed by a Python step on the loop
MAX_BYTES_TOTAL_BYTES = 16 * 1024 * 1024  # one BYTES input's serialized length, prefixes included
BYTES_PREFIX = struct.Struct("<I")  # Triton's length prefix of each BYTES element
SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
_SHM_KEYS = frozenset({SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE})
# Which repeated field of InferTensorContents carries each datatype, and the type its values
# have on the wire: wider than 8 and 16 bits (FP16 has no field: raw only; BYTES: bytes_contents).
_TYPED_FIELD: dict[str, tuple[str, np.dtype]] = {
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
}


@dataclass(frozen=True)
class MalformedRequest:
    """Bytes that are not a ModelInferRequest. gRPC answers INTERNAL when a deserializer
    raises, so the deserializer returns this instead and the servicer refuses it with
    INVALID_ARGUMENT."""

    reason: str


def parse_infer_request(data: bytes) -> pb.ModelInferRequest | MalformedRequest:
    """The ModelInfer request deserializer: never raises."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        return MalformedRequest(str(exc)[:200] or type(exc).__name__)


def _check_request_fields(request: pb.ModelInferRequest) -> None:
    if len(request.id) > MAX_ID_CHARS:
        raise InvalidInputError(f"request id is {len(request.id)} characters; at most {MAX_ID_CHARS}")
    if len(request.parameters) > MAX_PARAMETERS:
        raise InvalidInputError(f"{len(request.parameters)} parameters; at most {MAX_PARAMETERS}")
    for key, value in request.parameters.items():
        if len(key) > MAX_PARAMETER_NAME_CHARS:
            raise InvalidInputError(f"a parameter name is {len(key)} characters; at most {MAX_PARAMETER_NAME_CHARS}")
        text = parameter_value(value)
        if isinstance(text, str) and len(text) > MAX_PARAMETER_STRING_CHARS:
            raise InvalidInputError(
                f"parameter {shown(key)} is {len(text)} characters; at most {MAX_PARAMETER_STRING_CHARS}"
            )


def _check_values(name: str, array: np.ndarray, spec: TensorSpec) -> None:
    """The declared value range; NaN counts as outside it (it compares false with anything)."""
    if spec.min_value is None and spec.max_value is None:
        return
    low, high = array.min(), array.max()
    if (spec.min_value is not None and not low >= spec.min_value) or (
        spec.max_value is not None and not high <= spec.max_value
    ):
        lowest = "-inf" if spec.min_value is None else f"{spec.min_value:g}"
        highest = "inf" if spec.max_value is None else f"{spec.max_value:g}"
        raise InvalidInputError(f"input {shown(name)}: values must lie in [{lowest}, {highest}]; got {low} to {high}")


def _check_shape(name: str, shape: list[int], spec: TensorSpec, max_batch_size: int) -> None:
    if len(shape) != len(spec.shape):
        raise InvalidInputError(
            f"input {shown(name)}: expected {len(spec.shape)} dimensions {spec.shape}, got {listed(shape)}"
        )
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"input {shown(name)}: shape {shape} has a negative dimension")
    if spec.shape[0] != -1 and shape[0] != spec.shape[0]:
        raise InvalidInputError(
            f"input {shown(name)}: dimension 0 is {shape[0]}; the model's graph fixes it at {spec.shape[0]} "
            f"(shape {spec.shape})"
        )
    if shape[0] < 1 or shape[0] > max_batch_size:
        raise InvalidInputError(f"input {shown(name)}: batch size {shape[0]} outside 1..{max_batch_size}")
    for axis, (got, want) in enumerate(zip(shape[1:], spec.shape[1:], strict=True), start=1):
        if want != -1 and got != want:
            raise InvalidInputError(
                f"input {shown(name)}: dimension {axis} is {got}, expected {want} (shape {spec.shape})"
            )
        if got == 0:
            raise InvalidInputError(f"input {shown(name)}: dimension {axis} is 0")
        limit = spec.max_shape[axis] if spec.max_shape else -1
        if limit != -1 and got > limit:
            raise InvalidInputError(f"input {shown(name)}: dimension {axis} is {got}, at most {limit}")


def _check_range(name: str, datatype: str, field: str, values: np.ndarray) -> None:
    """Typed contents narrowed to `datatype` keep their value: each lies in its range."""
    dtype = DTYPES[datatype]
    if dtype.kind not in "iu" or values.dtype == dtype:
        return
    info = np.iinfo(dtype)
    low, high = int(values.min()), int(values.max())
    if low < info.min or high > info.max:
        raise InvalidInputError(
            f"input {shown(name)}: contents.{field} holds {low if low < info.min else high}, "
            f"outside {datatype}'s range [{info.min}, {info.max}]"
        )


def _decode_tensor(
    tensor: pb.ModelInferRequest.InferInputTensor,
    spec: TensorSpec,
    raw: bytes | None,
    max_batch_size: int,
    slot: Slot | None = None,
) -> np.ndarray:
    """One input as numpy, from its shared memory (`slot`), its raw bytes (`raw`) or else its
    typed contents."""
    name = tensor.name
    if tensor.datatype != spec.datatype:
        raise InvalidInputError(f"input {shown(name)}: datatype {shown(tensor.datatype)}, expected {spec.datatype}")
    shape = list(tensor.shape)
    _check_shape(name, shape, spec, max_batch_size)
    dtype = DTYPES[spec.datatype]
    count = math.prod(shape)  # exact (module docstring): every size below compares Python ints
    if slot is not None:  # sized before a byte is copied out of the region
        if spec.datatype == "BYTES" and slot.size > MAX_BYTES_TOTAL_BYTES:
            raise InvalidInputError(
                f"input {shown(name)}: {SHM_BYTE_SIZE} {slot.size} for BYTES; at most {MAX_BYTES_TOTAL_BYTES}"
            )
        if spec.datatype != "BYTES" and slot.size != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {shown(name)}: {SHM_BYTE_SIZE} {slot.size}, expected {count * dtype.itemsize} "
                f"for shape {shape} of {spec.datatype}"
            )
        raw = slot.read()
    if spec.datatype == "BYTES":
        return _decode_bytes(tensor, shape, count, raw)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {shown(name)}: {len(raw)} bytes of raw contents, expected "
                f"{count * dtype.itemsize} for shape {shape} of {spec.datatype}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if spec.datatype not in _TYPED_FIELD:
        raise InvalidInputError(
            f"input {shown(name)}: {spec.datatype} has no typed contents field; send raw_input_contents"
        )
    if count > MAX_TYPED_VALUES:
        raise InvalidInputError(
            f"input {shown(name)}: {count} typed values; above {MAX_TYPED_VALUES} send raw_input_contents"
        )
    field, wire = _TYPED_FIELD[spec.datatype]
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"input {shown(name)}: {len(values)} values in contents.{field}, expected {count} for shape {shape}"
        )
    array = np.asarray(values, dtype=wire)  # the field's own type: every value fits
    _check_range(name, spec.datatype, field, array)
    return array.astype(dtype, copy=False).reshape(shape)


def _decode_bytes(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], count: int, raw: bytes | None
) -> np.ndarray:
    """A BYTES input as an object array of `str` (module docstring: the wire format, bounds)."""
    name = tensor.name
    if count > MAX_BYTES_ELEMENTS:
        raise InvalidInputError(f"input {shown(name)}: {count} BYTES elements; at most {MAX_BYTES_ELEMENTS}")
    if raw is None:
        values = tensor.contents.bytes_contents
        if len(values) != count:
            raise InvalidInputError(
                f"input {shown(name)}: {len(values)} values in contents.bytes_contents, expected {count} "
                f"for shape {shape}"
            )
        if sum(len(v) for v in values) > MAX_BYTES_TOTAL_BYTES:
            raise InvalidInputError(f"input {shown(name)}: more than {MAX_BYTES_TOTAL_BYTES} bytes of BYTES contents")
        elements = _text(name, list(values))
    else:
        if len(raw) > MAX_BYTES_TOTAL_BYTES:
            raise InvalidInputError(
                f"input {shown(name)}: {len(raw)} bytes of raw BYTES; at most {MAX_BYTES_TOTAL_BYTES}"
            )
        elements = _text(name, _split_bytes(name, raw, count, shape))
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array.reshape(shape)


def _text(name: str, elements: list[bytes]) -> list[str]:
    try:
        return [element.decode() for element in elements]
    except UnicodeDecodeError:
        index = next(i for i, e in enumerate(elements) if not _is_utf8(e))
        raise InvalidInputError(
            f"input {shown(name)}: BYTES element {index} is not UTF-8; ONNX Runtime's string tensors take text"
        ) from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _split_bytes(name: str, raw: bytes, count: int, shape: list[int]) -> list[bytes]:
    """Triton's serialization of `count` BYTES elements: length prefix, bytes, and nothing after."""
    if count * BYTES_PREFIX.size > len(raw):
        raise InvalidInputError(
            f"input {shown(name)}: {len(raw)} bytes of raw contents cannot hold {count} BYTES elements "
            f"for shape {shape} (each needs a {BYTES_PREFIX.size}-byte length prefix)"
        )
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for index in range(count):
        if offset + BYTES_PREFIX.size > len(raw):
            raise InvalidInputError(
                f"input {shown(name)}: raw contents end at element {index} of {count}, before its length prefix"
            )
        (length,) = BYTES_PREFIX.unpack_from(raw, offset)
        offset += BYTES_PREFIX.size
        if offset + length > len(raw):
            raise InvalidInputError(
                f"input {shown(name)}: element {index} declares {length} bytes; only {len(raw) - offset} remain "
                "in raw contents (each BYTES element is a 4-byte little-endian length, then the bytes)"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise InvalidInputError(
            f"input {shown(name)}: {len(raw) - offset} bytes of raw contents left after the {count} BYTES "
            f"elements of shape {shape}"
        )
    return elements


def _serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's serialization of a string tensor, row-major; str elements as UTF-8."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(BYTES_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _slot(what: str, parameters: Mapping[str, Any], memory: CallerRegions | None) -> Slot | None:
    """Where the tensor `what` names lies in shared memory, from its parameters; None when
    they name no region (module docstring: Shared memory)."""
    given = {key: parameter_value(parameters[key]) for key in sorted(_SHM_KEYS) if key in parameters}
    if not given:
        return None
    region = given.get(SHM_REGION)
    if not isinstance(region, str) or not region:
        raise InvalidInputError(f"{what}: {listed(sorted(given))} given without a {SHM_REGION} name (a string)")
    if SHM_BYTE_SIZE not in given:
        raise InvalidInputError(f"{what}: {SHM_REGION} given without {SHM_BYTE_SIZE}")
    offset, size = given.get(SHM_OFFSET, 0), given[SHM_BYTE_SIZE]
    for key, value in ((SHM_OFFSET, offset), (SHM_BYTE_SIZE, size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{what}: {key} must be a whole number of bytes, 0 or more; got {value!r:.40}")
    assert isinstance(offset, int) and isinstance(size, int)  # checked just above
    if memory is None:
        raise InvalidInputError(f"{what}: shared memory is not available on this path")
    return memory.slot(region, offset, size, what)


def read_parameters(request: pb.ModelInferRequest) -> dict[str, bool | int | float | str]:
    """The request's id and parameters checked for size, and the parameters as plain values
    (read before decoding: the data plane parses the routing hints from them)."""
    _check_request_fields(request)
    return {key: parameter_value(value) for key, value in request.parameters.items()}


def decode_request(
    request: pb.ModelInferRequest,
    config: ModelConfig,
    parameters: Mapping[str, bool | int | float | str],
    memory: CallerRegions | None = None,
) -> InferenceRequest:
    """Validate a ModelInferRequest against the model's config and turn it into numpy;
    `parameters` are `read_parameters(request)`; `memory` the shared memory regions the
    caller may read inputs from (module docstring)."""
    specs = {spec.name: spec for spec in config.inputs}
    given = [tensor.name for tensor in request.inputs]
    unknown = [name for name in given if name not in specs]
    if unknown:
        raise InvalidInputError(f"unknown input(s) {listed(unknown)}; model '{config.name}' takes {list(specs)}")
    missing = [name for name in specs if name not in given]
    if missing or len(given) != len(set(given)):
        raise InvalidInputError(f"inputs must be exactly {list(specs)} once each; got {listed(given)}")
    # Which inputs are in shared memory, from their parameters alone: the request's shape is
    # checked before any region is looked up.
    in_memory = [tensor for tensor in request.inputs if _SHM_KEYS & set(tensor.parameters)]
    for tensor in in_memory:
        if tensor.HasField("contents"):
            raise InvalidInputError(f"input {shown(tensor.name)}: both {SHM_REGION} and contents given; use one")
    on_wire = [tensor.name for tensor in request.inputs if not _SHM_KEYS & set(tensor.parameters)]
    raw = list(request.raw_input_contents)
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidInputError("both raw_input_contents and typed contents given; use one or the other")
    if raw and len(raw) != len(on_wire):
        besides = f" ({len(in_memory)} more in shared memory)" if in_memory else ""
        raise InvalidInputError(f"{len(raw)} raw_input_contents for {len(on_wire)} inputs{besides}")
    slots = {tensor.name: _slot(f"input {shown(tensor.name)}", tensor.parameters, memory) for tensor in in_memory}
    raw_of = dict(zip(on_wire, raw, strict=True)) if raw else {}
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = specs[tensor.name]
        slot = slots.get(tensor.name)
        array = _decode_tensor(tensor, spec, raw_of.get(tensor.name), config.max_batch_size, slot)
        _check_values(tensor.name, array, spec)
        arrays[tensor.name] = array
    batch_sizes = {a.shape[0] for a in arrays.values()}
    if len(batch_sizes) != 1:
        raise InvalidInputError(f"inputs disagree on the batch size: { {k: v.shape for k, v in arrays.items()} }")
    by_spec: dict[tuple[int, ...], tuple[str, tuple[int, ...]]] = {}
    for name, array in arrays.items():
        key = tuple(specs[name].shape)
        if key in by_spec and by_spec[key][1] != array.shape:
            other, other_shape = by_spec[key]
            raise InvalidInputError(f"inputs '{other}' {list(other_shape)} and '{name}' {list(array.shape)} must match")
        by_spec[key] = (name, array.shape)
    outputs = [output.name for output in request.outputs]
    known_outputs = [spec.name for spec in config.outputs]
    if any(name not in known_outputs for name in outputs):
        raise InvalidInputError(
            f"unknown output(s) in {listed(outputs)}; model '{config.name}' returns {known_outputs}"
        )
    # Each requested output is encoded once per entry: a repeated name would multiply the
    # response (a 0.26 MB request could build a 984 MB answer), so a subset, each at most once.
    name, times = Counter(outputs).most_common(1)[0] if outputs else ("", 0)
    if times > 1:
        raise InvalidInputError(f"output '{name}' is requested {times} times; name each output at most once")
    return InferenceRequest(
        model=request.model_name,
        variant=request.model_version,
        inputs=arrays,
        parameters=parameters,
        id=request.id,
        outputs=outputs,
    )


def output_slots(request: pb.ModelInferRequest, memory: CallerRegions | None) -> dict[str, Slot]:
    """The requested outputs to write into shared memory, by name (module docstring); read
    after `decode_request`, which checked the names."""
    slots = {}
    for output in request.outputs:
        slot = _slot(f"output {shown(output.name)}", output.parameters, memory)
        if slot is not None:
            slots[output.name] = slot
    return slots


def _parameter(value: str | float) -> pb.InferParameter:
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    return pb.InferParameter(double_param=float(value))


def encode_response(
    request: InferenceRequest,
    result: InferenceResult,
    config: ModelConfig,
    slots: Mapping[str, Slot] | None = None,
) -> pb.ModelInferResponse:
    """Every output goes in raw_output_contents, in the order of `outputs` (BYTES serialized
    as Triton does), or into its shared memory `slots` with an empty entry there (module
    docstring)."""
    response = pb.ModelInferResponse(model_name=config.name, model_version=result.variant, id=request.id)
    wanted = request.outputs or [spec.name for spec in config.outputs]
    datatypes = {spec.name: spec.datatype for spec in config.outputs}
    for name in wanted:
        array = np.ascontiguousarray(result.outputs[name], dtype=DTYPES[datatypes[name]])
        response.outputs.add(name=name, datatype=datatypes[name], shape=list(array.shape))
        slot = (slots or {}).get(name)
        if slot is None:
            response.raw_output_contents.append(
                _serialize_bytes(array) if datatypes[name] == "BYTES" else array.tobytes()
            )
        else:  # the bytes go once, straight into the region
            slot.write(_serialize_bytes(array) if datatypes[name] == "BYTES" else array.reshape(-1).view(np.uint8).data)
            response.raw_output_contents.append(b"")
    response.parameters["variant"].CopyFrom(_parameter(result.variant))
    response.parameters["device"].CopyFrom(_parameter(result.device))
    response.parameters["reason"].CopyFrom(_parameter(result.reason))
    response.parameters["predicted_ms"].CopyFrom(_parameter(result.predicted_ms))
    response.parameters["queue_ms"].CopyFrom(_parameter(result.queue_ms))
    response.parameters["compute_ms"].CopyFrom(_parameter(result.compute_ms))
    response.parameters["batch_size"].CopyFrom(pb.InferParameter(int64_param=result.batch_size))
    if result.feedback_ticket:  # what Feedback names this answer by (observe.feedback)
        response.parameters["feedback_ticket"].CopyFrom(_parameter(result.feedback_ticket))
    return response
