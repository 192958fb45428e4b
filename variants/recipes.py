"""Recipes: how to build each model's variants. YAML files validate against these.

Three kinds: `torch-classifier` (a `module:function` entry point returning a
ClassifierSpec; the built-in `digits` is one), `minilm` (the bundled sentence encoder), and
`onnx` (a user's ONNX file plus calibration rows in .npy/.npz → fp32 + int8). The defaults
are the measured, committed settings of the default repository; tests shrink them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from variants.repository import RepositoryError, VariantKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileSettings(_Strict):
    """Latency profiling: batch sizes, time budget per batch size, sequence length for text."""

    batch_sizes: list[int] = Field(default=[1, 8, 32], min_length=1)
    seconds_per_batch_size: float = Field(default=3.0, gt=0)
    seq_len: int = Field(default=32, ge=1, description="tokens per item when profiling an encoder")


class ServingSettings(_Strict):
    """What goes into model.yaml for the server."""

    default_slo_ms: float = Field(default=50.0, gt=0)
    max_batch_size: int = Field(default=32, ge=1)
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="extra wait for more requests; 0 batches whatever queued while the session was busy",
    )
    throughput_slo_rps: float | None = Field(
        default=None, gt=0, description="requests/s the router must sustain, moving loose-SLO traffic if needed"
    )


class ClassifierPrune(_Strict):
    """Iterative channel pruning: widths after each step, fine-tuning between steps."""

    keep_fractions: list[float] = Field(default=[0.75, 0.5], min_length=1)
    finetune_epochs: int = Field(default=4, ge=0)
    lr: float = Field(default=2e-3, gt=0)


class ClassifierDistill(_Strict):
    """Hinton distillation of the spec's student from the fp32 teacher."""

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=5e-3, gt=0)


class ClassifierRecipe(_Strict):
    """A torch classifier from an entry point → fp32, int8, pruned, distilled."""

    kind: Literal["torch-classifier"] = "torch-classifier"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    entry_point: str = Field(pattern=r"^[\w.]+:\w+$")
    variants: list[VariantKind] = ["fp32", "int8", "pruned", "distilled"]
    teacher_epochs: int = Field(default=15, ge=0, description="used when the spec's teacher is untrained")
    teacher_lr: float = Field(default=3e-3, gt=0)
    max_train_rows: int | None = Field(default=None, ge=16)
    calibration_rows: int = Field(default=256, ge=1)
    selection_rows: int = Field(default=300, ge=1, description="train rows that choose the int8 settings")
    prune: ClassifierPrune = ClassifierPrune()
    distill: ClassifierDistill = ClassifierDistill()
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings(default_slo_ms=20.0)


class EncoderPruneStep(_Strict):
    """Prune every layer down to `heads` heads and `ffn` neurons, then fine-tune `epochs`."""

    heads: int = Field(ge=1)
    ffn: int = Field(ge=1)
    epochs: int = Field(default=1, ge=0)


class EncoderPrune(_Strict):
    """Iterative head + FFN-neuron pruning with distillation fine-tuning between steps."""

    steps: list[EncoderPruneStep] = Field(
        default=[
            EncoderPruneStep(heads=10, ffn=1152, epochs=1),
            EncoderPruneStep(heads=9, ffn=960, epochs=1),
            EncoderPruneStep(heads=8, ffn=768, epochs=3),
        ],
        min_length=1,
    )
    lr: float = Field(default=3e-4, gt=0)


class EncoderDistill(_Strict):
    """A student made of some of the teacher's layers, distilled layer by layer."""

    keep_layers: list[int] = Field(default=[1, 3, 5], min_length=1)
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=4e-4, gt=0)


class EncoderRecipe(_Strict):
    """The bundled all-MiniLM-L6-v2 → fp32, int8, pruned, distilled."""

    kind: Literal["minilm"] = "minilm"
    name: str = "minilm"
    variants: list[VariantKind] = ["fp32", "int8", "pruned", "distilled"]
    max_tokens: int = Field(default=64, ge=8)
    train_sentences: int | None = Field(default=None, ge=16)
    eval_sentences: int | None = Field(default=None, ge=8)
    selection_sentences: int = Field(default=300, ge=8)
    prune: EncoderPrune = EncoderPrune()
    distill: EncoderDistill = EncoderDistill()
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings(default_slo_ms=100.0, max_batch_size=16)


class OnnxRecipe(_Strict):
    """A user's ONNX model → fp32 (as given) + int8. Quality = fidelity to the fp32 graph."""

    kind: Literal["onnx"] = "onnx"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    calibration: Path = Field(description=".npy (one input) or .npz (one array per input name)")
    task: Literal["classifier", "encoder"] = "classifier"
    quantization: Literal["static", "dynamic"] = "static"
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings()


Recipe = Annotated[ClassifierRecipe | EncoderRecipe | OnnxRecipe, Field(discriminator="kind")]
_RECIPES = TypeAdapter(list[Recipe])


def default_recipes() -> list[ClassifierRecipe | EncoderRecipe | OnnxRecipe]:
    """The built-in default repository: `digits` and `minilm`."""
    return [ClassifierRecipe(name="digits", entry_point="variants.models.digits:spec"), EncoderRecipe()]


def load_recipes(path: Path) -> list[ClassifierRecipe | EncoderRecipe | OnnxRecipe]:
    """Recipes from a YAML file holding one recipe or a list of them."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RepositoryError(f"{path}: cannot read recipe: {exc}") from exc
    try:
        return _RECIPES.validate_python(raw if isinstance(raw, list) else [raw])
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors())
        raise RepositoryError(f"{path}: {problems}") from exc
