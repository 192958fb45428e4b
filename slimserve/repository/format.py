"""The model repository format: schemas, validated loading, and atomic writes.

Layout::

    <repo>/<model>/model.yaml                 ModelConfig
    <repo>/<model>/<variant>/model.onnx       the variant's graph
    <repo>/<model>/<variant>/variant.json     VariantManifest (recipe, measurements, profiles)

Folders whose names start with a dot are work in progress (a build stages a whole model
in `<repo>/.building-<model>`, a variant in `<model>/.tmp-<variant>-<pid>`) and are never
loaded. Every write goes to a temporary name first and is renamed into place, so a crash
mid-build never leaves a half-written variant that loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The Open Inference Protocol's tensor datatypes that ONNX Runtime runs (BYTES: string tensors).
Datatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64", "BYTES"
]  # fmt: skip
# The numpy type of each datatype (BYTES: object arrays of str, what ONNX Runtime's string
# tensors hold); the codec reads and writes these on the wire.
DATATYPE_DTYPES: dict[str, str] = {
    "BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
    "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "FP16": "float16", "FP32": "float32",
    "FP64": "float64", "BYTES": "object",
}  # fmt: skip
# What a model does, which decides how its quality and live fidelity are measured: a
# classifier by top-1 agreement (and Feedback takes class labels), an encoder by cosine, and
# a generic model (any ONNX graph: any inputs and outputs) by fidelity to its reference
# (repository.fidelity).
Task = Literal["classifier", "encoder", "generic"]
# A variant's kind is the last step of its chain (variants.chains): `pruned-int8` is an int8.
VariantKind = Literal["fp32", "int8", "int4", "pruned", "distilled", "lowrank", "fp16", "qat", "int8mixed"]
MODEL_FILE = "model.yaml"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "variant.json"
# The order in which tables list variants: the reference first, cheaper ones after.
KIND_ORDER: tuple[str, ...] = ("fp32", "fp16", "int8mixed", "int8", "qat", "int4", "pruned", "lowrank", "distilled")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME_CHARS = 128
# A batcher keeps one queue per priority level and the router reads every level's rows per
# snapshot: a handful of levels is what scheduling needs, and the bound keeps both small.
MAX_PRIORITY_LEVELS = 16


class RepositoryError(Exception):
    """The repository on disk is missing something or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _valid_dims(dims: list[int]) -> bool:
    """Every dimension positive, or -1 for variable."""
    return all(d > 0 or d == -1 for d in dims)


class TensorSpec(_Strict):
    """One input or output tensor. Dimension -1 is variable; the first is the batch.

    What the model accepts beyond its shape is declared here and checked on every request,
    so that a value the model cannot run (a token id outside the vocabulary, a sequence
    longer than the position table) is refused with INVALID_ARGUMENT naming the tensor
    instead of failing inside the session.
    """

    name: str = Field(min_length=1)
    datatype: Datatype
    shape: list[int] = Field(min_length=1)
    max_shape: list[int] | None = Field(
        default=None, description="largest size of each variable dimension (-1: no limit); the batch is max_batch_size"
    )
    min_value: float | None = Field(default=None, description="smallest value an element may take (inputs)")
    max_value: float | None = Field(default=None, description="largest value an element may take (inputs)")
    pad_value: float | None = Field(
        default=None,
        description="inputs: requests that differ in a variable dimension may share a batch, padded with this "
        "value (a masked encoder's token ids and mask: padding with mask 0 changes no result)",
    )

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if not _valid_dims(shape):
            raise ValueError("dimensions must be positive or -1 (variable)")
        return shape

    @model_validator(mode="after")
    def _limits(self) -> TensorSpec:
        if self.datatype == "BYTES" and (
            self.min_value is not None or self.max_value is not None or self.pad_value is not None
        ):
            raise ValueError("a BYTES tensor takes no min_value, max_value or pad_value")
        if self.max_shape is not None and (len(self.max_shape) != len(self.shape) or not _valid_dims(self.max_shape)):
            raise ValueError(f"max_shape {self.max_shape} must have {len(self.shape)} dimensions, each > 0 or -1")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} is above max_value {self.max_value}")
        return self


def check_name(name: str, what: str) -> str:
    """The one rule for model and variant names, wherever a name arrives (repository,
    requests, load/unload): letters, digits, '_', '-' and '.', not starting with '.', at most
    MAX_NAME_CHARS characters. Names become folder names, so this keeps every one a single
    path component inside the repository: no '/', '\\', '..' component, hidden folder, NUL,
    control character or whitespace can pass, while 'model..1' and 'my.model' can."""
    if not NAME_PATTERN.fullmatch(name) or name.startswith(".") or len(name) > MAX_NAME_CHARS:
        raise ValueError(
            f"{what} name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            f"not starting with '.', at most {MAX_NAME_CHARS} characters"
        )
    return name


def inside(path: Path, root: Path) -> Path:
    """`path` with symlinks resolved; RepositoryError if that leaves `root` (a symlink out of
    the repository would let a model folder serve, or a reload read, any file on the host)."""
    resolved, resolved_root = path.resolve(), root.resolve()
    if not resolved.is_relative_to(resolved_root):
        raise RepositoryError(f"{path}: resolves to {resolved}, outside the repository {resolved_root}")
    return resolved


class QualityMetric(_Strict):
    """The model's headline quality number; always a fraction in [0, 1]."""

    name: str
    higher_is_better: bool = True
    description: str = ""


class ModelConfig(_Strict):
    """`model.yaml`: what the model takes and returns and how it is served."""

    name: str = Field(min_length=1)
    task: Task
    description: str = ""
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    quality_metric: QualityMetric
    reference_variant: str = "fp32"
    # Not used to serve: a call that names no version is routed. Kept (and checked to name a
    # variant) so that model.yaml files which set it still load.
    default_variant: str = "fp32"
    default_slo_ms: float = Field(gt=0)
    max_batch_size: int = Field(default=32, ge=1)
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    throughput_slo_rps: float | None = Field(default=None, gt=0, description="requests/s the router must sustain")
    priority_levels: int = Field(
        default=0,
        ge=0,
        le=MAX_PRIORITY_LEVELS,
        description="levels of the request parameter `priority` (Triton's dynamic_batching priority_levels): "
        "each variant's batcher takes level 1 first, then 2, …; 0: no levels, one queue in arrival order",
    )
    default_priority_level: int = Field(
        default=0,
        ge=0,
        description="the level of a request that sends no priority (or 0): in [1, priority_levels], "
        "0 when the model has no levels (as Triton requires)",
    )
    labels: list[str] | None = None
    served_variants: list[str] | None = Field(
        default=None,
        description="the variants the server loads (the reference and default among them); "
        "None serves every variant built. The others stay in the repository as measured candidates.",
    )
    skipped_variants: dict[str, str] | None = Field(
        default=None,
        description="variants the build tried and left out, each with the reason (cannot be made, or "
        "slower and not smaller on the build machine); None when the build skipped none",
    )
    version_numbers: dict[str, int] | None = Field(
        default=None,
        description="each variant's Triton version number, kept by every later build so that a number "
        "never changes meaning; variants not listed are numbered after these, by name (server.core.versions)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name, "model")

    @field_validator("version_numbers")
    @classmethod
    def _version_numbers(cls, numbers: dict[str, int] | None) -> dict[str, int] | None:
        if numbers is None:
            return None
        if any(number < 1 for number in numbers.values()):
            raise ValueError(f"version numbers start at 1: {numbers}")
        if len(set(numbers.values())) != len(numbers):
            raise ValueError(f"two variants share a version number: {numbers}")
        return numbers

    @model_validator(mode="after")
    def _priority(self) -> ModelConfig:
        levels, default = self.priority_levels, self.default_priority_level
        if levels == 0 and default != 0:
            raise ValueError(f"default_priority_level is {default} but priority_levels is 0 (no levels): set both")
        if levels > 0 and not 1 <= default <= levels:
            raise ValueError(f"default_priority_level must be in [1, {levels}] (priority_levels), got {default}")
        return self


class LatencyStats(_Strict):
    """Latency of one session call at one batch size, over `samples` timed calls."""

    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    samples: int = Field(ge=1)


class HardwareFingerprint(_Strict):
    """What makes a latency profile valid: the chip, the cores used, the runtime, threads."""

    cpu_model: str
    cores: int = Field(ge=1)
    isa: list[str]
    onnxruntime: str
    threads: int = Field(ge=1)
    device: str = "cpu"

    @property
    def key(self) -> str:
        """Stable short id under which profiles are stored."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class Profile(_Strict):
    """Latency of a variant on one hardware fingerprint, measured beside its reference."""

    label: str
    hardware: HardwareFingerprint
    measured_at: datetime
    input_note: str = ""
    latency: dict[int, LatencyStats]
    speedup: dict[int, float] = Field(default_factory=dict, description="δ = s/s* per batch size")


class SeedFormulas(_Strict):
    """Compression against the reference: α = a/a*, β = (a − a*)/a* (a = reference size)."""

    alpha_params: float
    beta_params: float
    alpha_bytes: float
    beta_bytes: float

    @classmethod
    def of(cls, ref_params: int, params: int, ref_bytes: int, size_bytes: int) -> SeedFormulas:
        """A graph without weights (a user's Add/Sub graph) counts as one parameter: α 1, β 0."""
        ref_params, params = max(ref_params, 1), max(params, 1)
        return cls(
            alpha_params=ref_params / params,
            beta_params=(ref_params - params) / params,
            alpha_bytes=ref_bytes / size_bytes,
            beta_bytes=(ref_bytes - size_bytes) / size_bytes,
        )


class Measurements(_Strict):
    """Everything measured about a variant, except latency (see Profile)."""

    params: int = Field(ge=0)
    macs: int | None = Field(default=None, ge=0, description="multiply-accumulates per item")
    size_bytes: int = Field(ge=1)
    quality: dict[str, float]
    agreement: dict[str, float] = Field(description="vs the reference variant")
    export_max_abs_diff: float | None = None
    eval_items: int = Field(ge=1)
    coded_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Deep Compression's storage figure: every weight tensor Huffman-coded, plus the graph",
    )
    session_rss_bytes: int | None = Field(
        default=None,
        ge=0,
        description="peak RSS a fresh process gains by loading the session and running it at max batch",
    )


class VariantManifest(_Strict):
    """`variant.json`: how a variant was made and what it measured."""

    name: str = Field(min_length=1)
    kind: VariantKind
    source: str | None = None
    device: str = "cpu"
    recipe: dict[str, Any] = Field(default_factory=dict)
    architecture: dict[str, Any] = Field(default_factory=dict)
    measurements: Measurements
    seed_formulas: SeedFormulas
    profiles: dict[str, Profile] = Field(default_factory=dict)
    onnx_sha256: str
    built_at: datetime

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name, "variant")

    @model_validator(mode="after")
    def _profile_keys(self) -> VariantManifest:
        for key, profile in self.profiles.items():
            if key != profile.hardware.key:
                raise ValueError(f"profile key {key!r} does not match its hardware fingerprint")
        return self


class VariantEntry(BaseModel):
    """A loaded variant: its manifest and where its graph lies."""

    manifest: VariantManifest
    onnx_path: Path


class ModelEntry(BaseModel):
    """A loaded model: its config, the variants it serves and every variant built, by name."""

    config: ModelConfig
    variants: dict[str, VariantEntry] = Field(description="the served ones: what the server loads and routes")
    candidates: dict[str, VariantEntry] = Field(description="every variant in the folder, served or not")
    path: Path


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"field '{where}': {item['msg']}")
    return "; ".join(parts)


_Schema = TypeVar("_Schema", bound=BaseModel)


def _parse(path: Path, schema: type[_Schema], read: Callable[[str], Any]) -> _Schema:
    try:
        raw = read(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RepositoryError(f"{path}: cannot read: {exc.strerror}") from exc
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise RepositoryError(f"{path}: {_describe(exc)}") from exc


def load_model_config(path: Path) -> ModelConfig:
    """Parse and validate one `model.yaml`."""
    return _parse(path, ModelConfig, yaml.safe_load)


def load_manifest(path: Path) -> VariantManifest:
    """Parse and validate one `variant.json`."""
    return _parse(path, VariantManifest, json.loads)


def load_model(model_dir: Path, root: Path | None = None) -> ModelEntry:
    """Load one model folder; every problem names the file and the field. Every folder and
    file it reads must resolve inside `root` (default: the folder's parent, the repository)."""
    root = model_dir.parent if root is None else root
    _check_folder_name(model_dir, "model")
    inside(model_dir, root)
    inside(model_dir / MODEL_FILE, root)
    config = load_model_config(model_dir / MODEL_FILE)
    if config.name != model_dir.name:
        raise RepositoryError(
            f"{model_dir / MODEL_FILE}: field 'name': {config.name!r} differs from folder {model_dir.name!r}"
        )
    variants: dict[str, VariantEntry] = {}
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _check_folder_name(folder, "variant")
        inside(folder, root)
        inside(folder / MANIFEST_FILE, root)
        manifest = load_manifest(folder / MANIFEST_FILE)
        if manifest.name != folder.name:
            raise RepositoryError(
                f"{folder / MANIFEST_FILE}: field 'name': {manifest.name!r} differs from folder {folder.name!r}"
            )
        onnx_path = folder / ONNX_FILE
        if not onnx_path.is_file():
            raise RepositoryError(f"{onnx_path}: missing")
        inside(onnx_path, root)
        variants[manifest.name] = VariantEntry(manifest=manifest, onnx_path=onnx_path)
    missing = [name for name in config.served_variants or [] if name not in variants]
    if missing:
        raise RepositoryError(
            f"{model_dir / MODEL_FILE}: field 'served_variants': no variant {', '.join(map(repr, missing))} "
            f"(found: {', '.join(variants) or 'none'})"
        )
    served = set(variants if config.served_variants is None else config.served_variants)
    for role in ("reference_variant", "default_variant"):
        if getattr(config, role) not in variants:
            raise RepositoryError(
                f"{model_dir / MODEL_FILE}: field '{role}': no variant {getattr(config, role)!r} "
                f"(found: {', '.join(variants) or 'none'})"
            )
        if getattr(config, role) not in served:
            raise RepositoryError(
                f"{model_dir / MODEL_FILE}: field '{role}': {getattr(config, role)!r} is not in served_variants"
            )
    ordered = sorted(
        variants.values(),
        key=lambda v: (v.manifest.name != config.reference_variant, KIND_ORDER.index(v.manifest.kind), v.manifest.name),
    )
    return ModelEntry(
        config=config,
        variants={v.manifest.name: v for v in ordered if v.manifest.name in served},
        candidates={v.manifest.name: v for v in ordered},
        path=model_dir,
    )


def _check_folder_name(folder: Path, what: str) -> None:
    try:
        check_name(folder.name, what)
    except ValueError as exc:
        raise RepositoryError(f"{folder}: {exc}") from exc


NOT_MODEL_FOLDERS = frozenset({"lost+found"})  # what a file system puts at a volume's root (ext4)


def model_folders(repo: Path) -> list[Path]:
    """The folders of `repo` that hold models: hidden ones are builds in progress, and a
    volume's `lost+found` (a repository on its own volume, as a Kubernetes PVC) is no model."""
    if not repo.is_dir():
        raise RepositoryError(f"{repo}: not a directory")
    return sorted(
        folder
        for folder in repo.iterdir()
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in NOT_MODEL_FOLDERS
    )


def load_repository(repo: Path, allow_empty: bool = False) -> dict[str, ModelEntry]:
    """Every model under `repo`, by name. Raises RepositoryError on the first problem."""
    models = {folder.name: load_model(folder, repo) for folder in model_folders(repo)}
    if not models and not allow_empty:
        raise RepositoryError(f"{repo}: no models (expected <repo>/<model>/{MODEL_FILE})")
    return models


def _write_file_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


RENAME_EXCHANGE = 2  # renameat2(2): swap two paths atomically (Linux ≥ 3.15; ext4, xfs, btrfs, tmpfs, overlayfs)
AT_FDCWD = -100
OLD_PREFIX = ".old-"  # a replaced model folder, until it is removed


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step; False where the kernel or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    return bool(done == 0)


def _replace_directory(staged: Path, target: Path) -> None:
    """Swap `staged` into `target`'s place. With an atomic exchange there is no moment
    without a model folder; without one (two renames), a process that dies between them
    leaves the old folder as `.old-<name>-<pid>`, which `restore_interrupted` puts back."""
    if target.exists() and _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # it holds the old model now
        return
    old = target.with_name(f"{OLD_PREFIX}{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def restore_interrupted(repo: Path) -> list[str]:
    """Put back every model folder a publish moved aside and died before replacing (its
    `.old-<name>-<pid>` with no `<name>` beside it); the names restored. A repository this
    process cannot write is left as it is."""
    restored = []
    for old in sorted(repo.glob(f"{OLD_PREFIX}*")):
        name = old.name[len(OLD_PREFIX) :].rpartition("-")[0]
        target = repo / name
        if not name or target.exists() or not (old / MODEL_FILE).is_file():
            continue
        with contextlib.suppress(OSError):
            os.rename(old, target)
            restored.append(name)
    return restored


def version_numbers_kept(previous: dict[str, int] | None, variants: list[str]) -> dict[str, int]:
    """The build's side: `previous` numbers kept, and each new variant in `variants` (in that
    order) given the next one. Numbers of variants no longer built stay reserved."""
    numbers = dict(previous or {})
    for name in variants:
        if name not in numbers:
            numbers[name] = max(numbers.values(), default=0) + 1
    return numbers


def write_model_config(model_dir: Path, config: ModelConfig) -> None:
    """Write `model.yaml` atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
    _write_file_atomically(model_dir / MODEL_FILE, text.encode())


def write_variant(model_dir: Path, manifest: VariantManifest, onnx_bytes: bytes) -> Path:
    """Write a variant folder atomically and return its path."""
    staged = model_dir / f".tmp-{manifest.name}-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    _write_file_atomically(staged / ONNX_FILE, onnx_bytes)
    _write_file_atomically(staged / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
    target = model_dir / manifest.name
    _replace_directory(staged, target)
    return target


def update_manifest(variant_dir: Path, manifest: VariantManifest) -> None:
    """Rewrite one `variant.json` in place (atomically), e.g. to add a profile."""
    _write_file_atomically(variant_dir / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())


def staging_dir(repo: Path, model: str) -> Path:
    """A fresh folder in which a whole model is built before it is published."""
    staged = repo / f".building-{model}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def publish_model(staged: Path, repo: Path, model: str) -> Path:
    """Move a fully built model from its staging folder into the repository."""
    restore_interrupted(repo)  # an earlier publish that died half-way: its model comes back first
    target = repo / model
    _replace_directory(staged, target)
    return target


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)
