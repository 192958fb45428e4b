"""Recipes: how to build each model's variants. YAML files validate against these.

Four kinds: `torch-classifier` (a `module:function` entry point returning a
ClassifierSpec; the built-in `digits` is one), `torch-model` (an entry point returning a
ModelSpec: any network, unlabelled rows, quality = fidelity to fp32), `minilm` (the bundled
sentence encoder), and `onnx` (a user's ONNX file plus calibration rows in .npy/.npz → fp32 +
int8). `slimserve build --entry-point` makes a `torch-classifier` recipe, and the build runs
the torch-model pipeline when the entry point returns a ModelSpec (variants.build). The defaults
are the measured, committed settings of the default repository; tests shrink them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from slimserve.repository.format import RepositoryError, Task
from slimserve.repository.profile import ProfileSettings
from slimserve.variants.chains import parse_chain
from slimserve.variants.installed import package_directory


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _chain_names(names: list[str]) -> list[str]:
    for name in names:
        parse_chain(name)
    if len(set(names)) != len(names):
        raise ValueError("a variant is listed twice")
    return names


VariantNames = Annotated[list[str], AfterValidator(_chain_names)]


class ServingSettings(_Strict):
    """What goes into model.yaml for the server, and which built variants it serves."""

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
    serve: Literal["all", "front"] = Field(
        default="all",
        description="'front': serve only the variants on the Pareto front (quality, latency, size) of the "
        "build machine's profile, plus the reference and `always_serve`; the rest stay measured candidates",
    )
    always_serve: list[str] = Field(default=[], description="served whatever the front says")
    max_served_variants: int | None = Field(
        default=None, ge=1, description="with serve: front, at most this many (the most accurate first)"
    )

    def model_yaml_fields(self) -> dict[str, Any]:
        """The settings that go into model.yaml as they are (the served set is decided at build)."""
        return self.model_dump(exclude={"serve", "always_serve", "max_served_variants"})


def _check_always_served(serving: ServingSettings, variants: list[str]) -> None:
    unknown = [name for name in serving.always_serve if name not in variants]
    if unknown:
        raise ValueError(f"serving.always_serve names {unknown}, which the recipe does not build")


class ClassifierPrune(_Strict):
    """Iterative channel pruning: widths after each step, fine-tuning between steps."""

    keep_fractions: list[float] = Field(default=[0.75, 0.5], min_length=1)
    pruner: Literal["auto", "sequential", "graph"] = Field(
        default="auto",
        description="'sequential': the hand-written pruner (nn.Sequential only); 'graph': Torch-Pruning's "
        "dependency graph (any network); 'auto': sequential where it applies, graph elsewhere",
    )
    finetune_epochs: int = Field(default=4, ge=0)
    lr: float = Field(default=2e-3, gt=0)


class ClassifierDistill(_Strict):
    """Hinton distillation of the spec's student from the fp32 teacher."""

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=5e-3, gt=0)


class ClassifierLowrank(_Strict):
    """Truncated SVD of Linear and Conv2d weights (variants.lowrank), then distillation."""

    energy: float = Field(default=0.9, gt=0, le=1, description="share of squared singular values each layer keeps")
    finetune_epochs: int = Field(default=4, ge=0)
    lr: float = Field(default=2e-3, gt=0)


class QatSettings(_Strict):
    """Quantization-aware training (variants.qat): fine-tuning under simulated int8, against
    the fp32 teacher, before ONNX Runtime quantizes the graph with the simulated settings."""

    epochs: int = Field(default=4, ge=0, description="fine-tuning epochs under fake quantization")
    lr: float = Field(default=2e-4, gt=0, description="peak learning rate (one-cycle), below the pruning step's")
    per_channel: bool = Field(default=True, description="one weight scale per output channel, else per tensor")
    reduce_range: bool = Field(
        default=False, description="7-bit weights: avoids VPMADDUBSW saturation on chips without VNNI"
    )


class ClassifierRecipe(_Strict):
    """A torch classifier from an entry point → fp32, int8, pruned, distilled and chains of them.

    A variant name is a chain of steps (variants.chains): `distilled-pruned-int8` prunes
    the distilled student and quantizes it."""

    kind: Literal["torch-classifier"] = "torch-classifier"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    entry_point: str = Field(pattern=r"^[\w.]+:\w+$")
    variants: VariantNames = ["fp32", "int8", "pruned", "distilled"]
    teacher_epochs: int = Field(default=15, ge=0, description="used when the spec's teacher is untrained")
    teacher_lr: float = Field(default=3e-3, gt=0)
    max_train_rows: int | None = Field(default=None, ge=16)
    calibration_rows: int = Field(default=256, ge=1)
    selection_rows: int = Field(default=300, ge=1, description="train rows that choose the int8 settings")
    prune: ClassifierPrune = ClassifierPrune()
    prune_by_chain: dict[str, ClassifierPrune] = Field(
        default={},
        description="prune settings for one chain's pruned step, by the chain's name up to that step "
        "(e.g. 'distilled-pruned': a student is already small, so it is pruned less)",
    )
    distill: ClassifierDistill = ClassifierDistill()
    lowrank: ClassifierLowrank = ClassifierLowrank()
    qat: QatSettings = QatSettings()
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings(default_slo_ms=20.0)

    @model_validator(mode="after")
    def _graph_steps(self) -> ClassifierRecipe:
        if any(parse_chain(name).last in ENCODER_ONLY_STEPS for name in self.variants):
            raise ValueError("int4 and int8mixed (per-role MatMul precision) are for encoders; classifiers use int8")
        for name in self.prune_by_chain:
            if parse_chain(name).last != "pruned":
                raise ValueError(f"prune_by_chain: {name!r} does not end in a pruned step")
        _check_always_served(self.serving, self.variants)
        return self


class ModelDistill(_Strict):
    """Distillation of the spec's student from the teacher's outputs (distill.output_matching_loss).

    More epochs than a classifier's Hinton loss: matching raw outputs asks more of a student
    than matching a softmax. Measured on the digits ResNet example (1,347 images): logits
    fidelity 0.64 after 30 epochs, 0.85 after 100."""

    epochs: int = Field(default=100, ge=1)
    lr: float = Field(default=5e-3, gt=0)


# Fine-tuning after a pruning step or a factorisation, for the same reason as ModelDistill.
MODEL_FINETUNE_EPOCHS = 10


class ModelRecipe(_Strict):
    """Any torch network from an entry point returning a ModelSpec → fp32, int8, pruned,
    distilled, lowrank and chains of them, every one fine-tuned against the teacher's outputs
    and scored by fidelity to fp32 on the held-out rows (variants.model_pipeline)."""

    kind: Literal["torch-model"] = "torch-model"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    entry_point: str = Field(pattern=r"^[\w.]+:\w+$")
    variants: VariantNames = ["fp32", "int8", "pruned", "distilled"]
    max_train_rows: int | None = Field(default=None, ge=16)
    calibration_rows: int = Field(default=256, ge=1)
    selection_rows: int = Field(default=300, ge=1, description="train rows that choose the int8 settings")
    prune: ClassifierPrune = ClassifierPrune(finetune_epochs=MODEL_FINETUNE_EPOCHS)
    prune_by_chain: dict[str, ClassifierPrune] = Field(
        default={}, description="prune settings for one chain's pruned step, as in a torch-classifier recipe"
    )
    distill: ModelDistill = ModelDistill()
    lowrank: ClassifierLowrank = ClassifierLowrank(finetune_epochs=MODEL_FINETUNE_EPOCHS)
    qat: QatSettings = QatSettings(epochs=MODEL_FINETUNE_EPOCHS)
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings(default_slo_ms=20.0)

    @model_validator(mode="after")
    def _graph_steps(self) -> ModelRecipe:
        if any(parse_chain(name).last in ENCODER_ONLY_STEPS for name in self.variants):
            raise ValueError("int4 and int8mixed (per-role MatMul precision) are for encoders; torch models use int8")
        for name in self.prune_by_chain:
            if parse_chain(name).last != "pruned":
                raise ValueError(f"prune_by_chain: {name!r} does not end in a pruned step")
        _check_always_served(self.serving, self.variants)
        return self

    @classmethod
    def from_classifier(cls, recipe: ClassifierRecipe) -> ModelRecipe:
        """The settings `recipe` sets, for an entry point that returned a ModelSpec; what it leaves
        unset takes this kind's defaults (`slimserve build --entry-point` sets only the name and
        entry point), and the classifier-only ones (teacher training, Hinton T and α) are dropped."""
        shared = recipe.model_dump(exclude_unset=True, exclude={"kind", "teacher_epochs", "teacher_lr"})
        if "distill" in shared:
            shared["distill"] = {k: v for k, v in shared["distill"].items() if k in ModelDistill.model_fields}
        return cls.model_validate(shared)


class EncoderPruneStep(_Strict):
    """Prune every layer down to `heads` heads and `ffn` neurons, then fine-tune `epochs`
    (fractional: 0.5 is half the batches of an epoch)."""

    heads: int = Field(ge=1)
    ffn: int = Field(ge=1)
    epochs: float = Field(default=1, ge=0)


class EncoderPrune(_Strict):
    """Iterative head + FFN-neuron pruning with distillation fine-tuning between steps."""

    # Half an epoch after each intermediate step instead of a whole one: the build 69 ± 10 s
    # shorter on an AVX2 EPYC, cosine 0.002 lower, retrieval agreement within what the training
    # seed alone moves it (docs/variants.md, "Half epochs between pruning steps").
    steps: list[EncoderPruneStep] = Field(
        default=[
            EncoderPruneStep(heads=10, ffn=1152, epochs=0.5),
            EncoderPruneStep(heads=9, ffn=960, epochs=0.5),
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


class EncoderLowrank(_Strict):
    """Truncated SVD of every Linear (variants.lowrank), then layer-wise distillation."""

    energy: float = Field(default=0.9, gt=0, le=1)
    epochs: int = Field(default=1, ge=0)
    lr: float = Field(default=3e-4, gt=0)


class EncoderInt4(_Strict):
    """Weight-only 4-bit MatMuls and embeddings; the most sensitive MatMuls stay 8-bit."""

    max_cosine_drop: float = Field(
        default=0.015, gt=0, lt=1, description="on the selection sentences, against the parent's embeddings"
    )
    block_size: int = Field(default=32, ge=16, description="weights per scale in MatMuls (a power of two)")
    embedding_block_size: int = Field(default=256, ge=16, description="the same for the embedding tables")


class EncoderRecipe(_Strict):
    """The bundled all-MiniLM-L6-v2 → fp32, int8, pruned, distilled and chains of them."""

    kind: Literal["minilm"] = "minilm"
    name: str = "minilm"
    variants: VariantNames = ["fp32", "int8", "pruned", "distilled"]
    max_tokens: int = Field(default=64, ge=8)
    train_sentences: int | None = Field(default=None, ge=16)
    train_on_packages: bool = Field(
        default=False,
        description="also train on the docstrings of the standard library's packages (15,376 training sentences "
        "instead of 6,979 on Python 3.11; the held-out set is unchanged): fine-tuning takes twice as long",
    )
    train_on_libraries: list[str] = Field(
        default=[],
        description="installed top-level packages whose docstrings are training text too (e.g. torch, pinned by "
        "the build: ~25,000 more training sentences); a library's text changes with its version",
    )
    eval_sentences: int | None = Field(default=None, ge=8)
    selection_sentences: int = Field(default=300, ge=8)
    train_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="pruning, distillation and low-rank fine-tuning: 'auto' is bf16 autocast where the CPU "
        "computes bf16 natively (AVX-512 BF16, AMX; about twice as fast), fp32 elsewhere",
    )
    prune: EncoderPrune = EncoderPrune()
    distill: EncoderDistill = EncoderDistill()
    lowrank: EncoderLowrank = EncoderLowrank()
    int4: EncoderInt4 = EncoderInt4()
    # One epoch at a tenth of the prune step's rate: the network starts as its parent; only the rounding is new.
    qat: QatSettings = QatSettings(epochs=1, lr=3e-5)
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings(default_slo_ms=100.0, max_batch_size=16)

    @model_validator(mode="after")
    def _served(self) -> EncoderRecipe:
        _check_always_served(self.serving, self.variants)
        return self

    @model_validator(mode="after")
    def _libraries_installed(self) -> EncoderRecipe:
        missing = [name for name in self.train_on_libraries if package_directory(name) is None]
        if missing:
            raise ValueError(
                f"train_on_libraries: {missing} are not top-level packages installed here, "
                "so their docstrings cannot be read"
            )
        return self


class OnnxInt4(_Strict):
    """Weight-only 4-bit MatMuls of a generic ONNX model (variants.weight_only)."""

    max_drop: float = Field(default=0.01, gt=0, lt=1, description="fidelity the int4 graph may lose on selection rows")
    block_size: int = Field(default=32, ge=16, description="weights per scale (a power of two)")


class OnnxRecipe(_Strict):
    """A user's ONNX model → fp32 (as given) + the compressed variants its graph allows.

    Quality is fidelity to the fp32 graph on held-out calibration rows: top-1 agreement for
    a classifier, cosine for an encoder, and for a generic model (any inputs and outputs)
    `repository.fidelity` over every output. A generic model tries each of `variants` and
    keeps those that can be made and are faster or smaller (variants.onnx_pipeline); without
    calibration rows it is served as fp32 alone."""

    kind: Literal["onnx"] = "onnx"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    calibration: Path | None = Field(
        default=None, description=".npy (one input) or .npz (one array per input name); needed but for generic"
    )
    # A recipe file without `task` meant a classifier before generic models existed, and still does.
    task: Task = "classifier"
    quantization: Literal["auto", "static", "dynamic"] = Field(
        default="auto",
        description="int8: 'auto' is static QDQ for a classifier or a graph with Conv, dynamic otherwise",
    )
    variants: list[Literal["int8", "fp16", "int4"]] = Field(
        default=["int8", "fp16", "int4"], description="generic: the compressed variants to try (int8 alone otherwise)"
    )
    int4: OnnxInt4 = OnnxInt4()
    min_fidelity: float = Field(
        default=0.9, ge=0, le=1, description="generic: a variant below this fidelity on held-out rows is skipped"
    )
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)
    profile: ProfileSettings = ProfileSettings()
    serving: ServingSettings = ServingSettings()

    @model_validator(mode="after")
    def _calibrated(self) -> OnnxRecipe:
        if self.calibration is None and self.task != "generic":
            raise ValueError(f"a {self.task} needs calibration rows to measure its int8 variant's fidelity")
        return self


Recipe = Annotated[ClassifierRecipe | ModelRecipe | EncoderRecipe | OnnxRecipe, Field(discriminator="kind")]
_RECIPES = TypeAdapter(list[Recipe])


ENCODER_ONLY_STEPS = ("int4", "int8mixed")  # graph steps that know an encoder's MatMul roles and cosine budget
# The kinds the product promises are always served; the stacked candidates only where they
# join the Pareto front of the build machine (variants.pareto).
PROMISED = ["int8", "pruned", "distilled"]


def default_recipes() -> list[AnyRecipe]:
    """The built-in default repository: `digits` and `minilm`, with their stacked candidates.

    Low-rank factorisation is not among them: measured on digits (AMD EPYC, AVX-512 VNNI),
    `lowrank` kept 78 % of the weights at energy 0.9 and ran at 0.89× fp32's speed, and
    the embedding table of minilm is not low-rank (rank 128 keeps 66 % of its energy,
    cosine 0.66); `recipes/candidates.yaml` builds them for comparison. Nor is quantization-aware
    training (`qat`): it matched post-training int8 within noise on both models while adding
    minutes of fine-tuning to each chain (docs/variants.md, "QAT vs PTQ"); `recipes/qat.yaml`
    builds it beside int8. Nor is minilm's weight-only `int4`: int8 is faster (1.66× fp32
    against 1.15×), more accurate (retrieval agreement 0.910 against 0.887) and as small in
    memory (53.7 MB against 52.0), so int4 wins only on file size, for two minutes of the
    build that kept the first `make run` over 15 minutes; `recipes/candidates.yaml` builds it.
    """
    return [
        ClassifierRecipe(
            name="digits",
            entry_point="slimserve.variants.models.digits:spec",
            variants=["fp32", "int8", "pruned", "distilled", "pruned-int8", "distilled-int8", "distilled-pruned-int8"],
            # The student is already small: pruned once, to 3/4 of its widths, and fine-tuned longer.
            prune_by_chain={"distilled-pruned": ClassifierPrune(keep_fractions=[0.75], finetune_epochs=8)},
            serving=ServingSettings(default_slo_ms=20.0, serve="front", always_serve=PROMISED),
        ),
        EncoderRecipe(
            variants=["fp32", "int8", "int8mixed", "pruned", "distilled", "pruned-int8", "distilled-int8"],
            serving=ServingSettings(default_slo_ms=100.0, max_batch_size=16, serve="front", always_serve=PROMISED),
        ),
    ]


def load_recipes(path: Path) -> list[AnyRecipe]:
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


AnyRecipe = ClassifierRecipe | ModelRecipe | EncoderRecipe | OnnxRecipe


def planned_variants(recipe: AnyRecipe) -> list[str]:
    """The variants the recipe builds: a classifier or encoder ONNX model fp32 and int8; a
    generic one fp32, and whichever of its `variants` the graph allows (decided in the build)."""
    if isinstance(recipe, ClassifierRecipe | ModelRecipe | EncoderRecipe):
        return list(recipe.variants)
    return ["fp32"] if recipe.task == "generic" else ["fp32", "int8"]
