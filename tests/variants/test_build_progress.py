"""A tiny real staged build writes a progress line for every stage, step and epoch, and
measures each graph once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slimserve.repository.format import Measurements, load_model, sha256_of
from slimserve.variants import build
from slimserve.variants.build import build_staged
from slimserve.variants.pipeline import PipelineResult, Runner
from slimserve.variants.progress import ModelProgress, ProgressLine
from slimserve.variants.recipes import AnyRecipe
from tests.conftest import tiny_digits_recipe


@pytest.mark.slow  # a whole (tiny) build
def test_a_staged_build_reports_every_stage_with_its_epochs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recipe = tiny_digits_recipe(name="blobs", entry_point="tests.variants.user_model:spec")  # seconds, not minutes
    every_tick = functools.partial(ModelProgress, interval_s=0.0)  # the rate limit is tested on a fake clock
    with caplog.at_level(logging.INFO, logger="slimserve.variants.progress"):
        build_staged([recipe], tmp_path, every_tick)
    lines = [line for r in caplog.records if (line := ProgressLine.parse(r.getMessage())) is not None]
    assert lines and all(line.model == "blobs" for line in lines)

    def of(variants: tuple[str, ...], stage: str) -> list[ProgressLine]:
        return [line for line in lines if line.variants == variants and line.stage == stage]

    def epochs(found: list[ProgressLine]) -> list[tuple[int, int]]:
        return [(line.done, line.total) for line in found if line.unit == "epoch"]

    # Each variant's own stage, then `made`.
    teacher, student = recipe.teacher_epochs, recipe.distill.epochs
    assert epochs(of(("fp32",), "train")) == [(i, teacher) for i in range(teacher + 1)]
    assert epochs(of(("distilled",), "distill")) == [(i, student) for i in range(student + 1)]
    pruning = of(("pruned",), "prune")
    steps = len(recipe.prune.keep_fractions)
    assert [line.step for line in pruning if line.unit == "epoch" and line.done == 1] == list(range(1, steps + 1))
    assert {line.steps for line in pruning if line.step} == {steps}
    candidates = [(line.done, line.total) for line in of(("int8",), "int8") if line.unit == "candidate"]
    assert candidates[0][0] == 0 and candidates[-1][0] == candidates[-1][1] > 0
    for variant in ("fp32", "int8", "pruned", "distilled"):
        assert of((variant,), "made"), variant
    # Every counted unit done so far gives an estimate; none is negative.
    trained = [line for line in lines if line.unit == "epoch" and line.done > 0]
    assert trained and all(line.remaining_s is not None and line.remaining_s >= 0 for line in trained)
    # Each publication: evaluate, profile (with its budget's estimate), measure, published.
    for published in (("fp32", "int8"), ("fp32", "int8", "pruned", "distilled")):
        stages = [line.stage for line in lines if line.variants == published and not line.unit]
        assert stages == ["evaluate", "profile", "measure", "published"], published
        assert all(line.remaining_s is not None for line in of(published, "profile"))
    # The first stage is published before the second starts.
    order = [(line.variants, line.stage) for line in lines]
    assert order.index((("fp32", "int8"), "published")) < order.index((("pruned",), "prune"))


@pytest.mark.slow  # a whole (tiny) build
def test_a_staged_build_measures_each_graph_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final publication reuses what the first one measured of the same graphs (held-out
    outputs, coded size, session memory): each graph runs on the held-out set once, and the
    figures published for fp32 and int8 stay as the first publication had them."""
    recipe = tiny_digits_recipe(name="blobs", entry_point="tests.variants.user_model:spec")
    ran: list[str] = []
    first: dict[str, Measurements] = {}
    stages = build.pipeline_stages

    def counted(recipe: AnyRecipe, progress: ModelProgress) -> Iterator[PipelineResult]:
        for number, result in enumerate(stages(recipe, progress)):
            if number == 1:  # the first publication is on disk
                first.update({n: v.manifest.measurements for n, v in load_model(tmp_path / "blobs").candidates.items()})
            run = result.run

            def counting_run(graph: bytes, rows: dict[str, np.ndarray], threads: int, run: Runner = run) -> np.ndarray:
                ran.append(sha256_of(graph))
                return run(graph, rows, threads)

            result.run = counting_run
            yield result

    monkeypatch.setattr(build, "pipeline_stages", counted)
    entry = build_staged([recipe], tmp_path)["blobs"]
    assert set(first) == {"fp32", "int8"}
    assert len(ran) == len(set(ran)) == len(entry.candidates) == 4
    for name, measurements in first.items():
        final = entry.candidates[name].manifest.measurements
        assert (final.quality, final.coded_bytes, final.session_rss_bytes) == (
            measurements.quality, measurements.coded_bytes, measurements.session_rss_bytes,
        )  # fmt: skip
