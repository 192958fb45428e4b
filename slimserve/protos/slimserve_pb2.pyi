from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListVariantsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LatencyPoint(_message.Message):
    __slots__ = ("batch_size", "p50_ms", "p95_ms")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    p50_ms: float
    p95_ms: float
    def __init__(self, batch_size: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ...) -> None: ...

class VariantProfile(_message.Message):
    __slots__ = ("label", "hardware_key", "this_machine", "latency", "speedup")
    class SpeedupEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_KEY_FIELD_NUMBER: _ClassVar[int]
    THIS_MACHINE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    label: str
    hardware_key: str
    this_machine: bool
    latency: _containers.RepeatedCompositeFieldContainer[LatencyPoint]
    speedup: _containers.ScalarMap[int, float]
    def __init__(self, label: _Optional[str] = ..., hardware_key: _Optional[str] = ..., this_machine: _Optional[bool] = ..., latency: _Optional[_Iterable[_Union[LatencyPoint, _Mapping]]] = ..., speedup: _Optional[_Mapping[int, float]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("model", "name", "kind", "device", "params", "macs", "size_bytes", "quality", "agreement", "alpha_params", "alpha_bytes", "beta_params", "beta_bytes", "profiles", "ready")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AgreementEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ALPHA_PARAMS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_BYTES_FIELD_NUMBER: _ClassVar[int]
    BETA_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BETA_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    kind: str
    device: str
    params: int
    macs: int
    size_bytes: int
    quality: _containers.ScalarMap[str, float]
    agreement: _containers.ScalarMap[str, float]
    alpha_params: float
    alpha_bytes: float
    beta_params: float
    beta_bytes: float
    profiles: _containers.RepeatedCompositeFieldContainer[VariantProfile]
    ready: bool
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., device: _Optional[str] = ..., params: _Optional[int] = ..., macs: _Optional[int] = ..., size_bytes: _Optional[int] = ..., quality: _Optional[_Mapping[str, float]] = ..., agreement: _Optional[_Mapping[str, float]] = ..., alpha_params: _Optional[float] = ..., alpha_bytes: _Optional[float] = ..., beta_params: _Optional[float] = ..., beta_bytes: _Optional[float] = ..., profiles: _Optional[_Iterable[_Union[VariantProfile, _Mapping]]] = ..., ready: _Optional[bool] = ...) -> None: ...

class BuildingVariant(_message.Message):
    __slots__ = ("model", "name", "progress")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    progress: BuildProgress
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., progress: _Optional[_Union[BuildProgress, _Mapping]] = ...) -> None: ...

class BuildProgress(_message.Message):
    __slots__ = ("stage", "step", "steps", "unit", "done", "total", "elapsed_s", "remaining_s")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: int
    steps: int
    unit: str
    done: int
    total: int
    elapsed_s: float
    remaining_s: float
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., unit: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., remaining_s: _Optional[float] = ...) -> None: ...

class ListVariantsResponse(_message.Message):
    __slots__ = ("variants", "building")
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    BUILDING_FIELD_NUMBER: _ClassVar[int]
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    building: _containers.RepeatedCompositeFieldContainer[BuildingVariant]
    def __init__(self, variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., building: _Optional[_Iterable[_Union[BuildingVariant, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "slo_ms", "min_quality", "policy", "batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SLO_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    slo_ms: float
    min_quality: float
    policy: str
    batch_size: int
    def __init__(self, model: _Optional[str] = ..., slo_ms: _Optional[float] = ..., min_quality: _Optional[float] = ..., policy: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("variant", "predicted_ms", "quality", "chosen", "reason", "device", "capacity_rows_s", "p_in_time", "cost_per_row_ms")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_ROWS_S_FIELD_NUMBER: _ClassVar[int]
    P_IN_TIME_FIELD_NUMBER: _ClassVar[int]
    COST_PER_ROW_MS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    predicted_ms: float
    quality: float
    chosen: bool
    reason: str
    device: str
    capacity_rows_s: float
    p_in_time: float
    cost_per_row_ms: float
    def __init__(self, variant: _Optional[str] = ..., predicted_ms: _Optional[float] = ..., quality: _Optional[float] = ..., chosen: _Optional[bool] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ..., capacity_rows_s: _Optional[float] = ..., p_in_time: _Optional[float] = ..., cost_per_row_ms: _Optional[float] = ...) -> None: ...

class ThroughputStatus(_message.Message):
    __slots__ = ("declared_rps", "arrival_rps", "completion_rps", "mix_capacity_rps", "guard_active", "sustained")
    DECLARED_RPS_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RPS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_RPS_FIELD_NUMBER: _ClassVar[int]
    MIX_CAPACITY_RPS_FIELD_NUMBER: _ClassVar[int]
    GUARD_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SUSTAINED_FIELD_NUMBER: _ClassVar[int]
    declared_rps: float
    arrival_rps: float
    completion_rps: float
    mix_capacity_rps: float
    guard_active: bool
    sustained: bool
    def __init__(self, declared_rps: _Optional[float] = ..., arrival_rps: _Optional[float] = ..., completion_rps: _Optional[float] = ..., mix_capacity_rps: _Optional[float] = ..., guard_active: _Optional[bool] = ..., sustained: _Optional[bool] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "chosen", "reason", "candidates", "slo_ms", "slo_source", "policy", "predicted_ms", "overhead_ms", "throughput", "cpu_utilization", "loop_lag_ms", "cpu_price", "cpu_target", "cpu_overhead_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SLO_MS_FIELD_NUMBER: _ClassVar[int]
    SLO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    CPU_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    LOOP_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_PRICE_FIELD_NUMBER: _ClassVar[int]
    CPU_TARGET_FIELD_NUMBER: _ClassVar[int]
    CPU_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    chosen: str
    reason: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    slo_ms: float
    slo_source: str
    policy: str
    predicted_ms: float
    overhead_ms: float
    throughput: ThroughputStatus
    cpu_utilization: float
    loop_lag_ms: float
    cpu_price: float
    cpu_target: float
    cpu_overhead_ms: float
    def __init__(self, model: _Optional[str] = ..., chosen: _Optional[str] = ..., reason: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., slo_ms: _Optional[float] = ..., slo_source: _Optional[str] = ..., policy: _Optional[str] = ..., predicted_ms: _Optional[float] = ..., overhead_ms: _Optional[float] = ..., throughput: _Optional[_Union[ThroughputStatus, _Mapping]] = ..., cpu_utilization: _Optional[float] = ..., loop_lag_ms: _Optional[float] = ..., cpu_price: _Optional[float] = ..., cpu_target: _Optional[float] = ..., cpu_overhead_ms: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model", "request_id", "labels", "ticket")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    labels: _containers.RepeatedScalarFieldContainer[int]
    ticket: str
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Iterable[int]] = ..., ticket: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("variant", "predicted", "correct")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    variant: str
    predicted: _containers.RepeatedScalarFieldContainer[int]
    correct: int
    def __init__(self, variant: _Optional[str] = ..., predicted: _Optional[_Iterable[int]] = ..., correct: _Optional[int] = ...) -> None: ...
