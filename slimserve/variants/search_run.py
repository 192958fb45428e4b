"""`slimserve build --search` for minilm: search int8 settings on a built repository's graphs.

The parents are the float variants already built (fp32, pruned, distilled: their
`model.onnx`); the reference is fp32. Every row the search sees comes from the *training*
split of the sentences (variants.data.split_sentences), disjoint from the held-out set the
build evaluates on: the first CALIBRATION_SENTENCES give SmoothQuant its activation maxima,
the last PROXY_SENTENCES score candidates by retrieval agreement (variants.evaluate), and
one training sentence padded to the profile's length is the timing input. The report
(variants.search_report) then measures the front on the held-out set.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

from slimserve.repository.format import RepositoryError
from slimserve.repository.hardware import threads_for
from slimserve.repository.profile import ProfileSettings
from slimserve.variants.data import documentation_sentences, minilm_tokenizer, split_sentences
from slimserve.variants.evaluate import embed_as_served, encoder_scores
from slimserve.variants.search import QuantSearch, Scorer, SearchBudget, SearchResult

log = logging.getLogger(__name__)
CALIBRATION_SENTENCES = 256
# Retrieval among more sentences is harder: 600 keeps a trial's scoring near 5 s on two
# cores while ranking candidates as the 1,684 held-out sentences do.
PROXY_SENTENCES = 600
MAX_TOKENS = 64  # as the default minilm recipe
PARENTS = ("fp32", "pruned", "distilled")
REFERENCE = "fp32"


def retrieval_scorer(reference: bytes, rows: dict[str, np.ndarray], threads: int) -> Scorer:
    """A graph's retrieval agreement with `reference`'s embeddings of `rows` (computed once)."""
    expected = embed_as_served(reference, rows, threads)

    def score(graph: bytes) -> float:
        return encoder_scores(embed_as_served(graph, rows, threads), expected)[0]["retrieval_agreement"]

    return score


@dataclass(frozen=True)
class SearchRows:
    """The search's inputs from one parse of the sentence corpus: proxy and calibration rows
    and the timing item from the training split, and the held-out rows for the report."""

    proxy: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]
    timing: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]


def search_rows(
    proxy_sentences: int = PROXY_SENTENCES, calibration_sentences: int = CALIBRATION_SENTENCES
) -> SearchRows:
    """The rows the search and its report use (SearchRows)."""
    tokenizer = minilm_tokenizer(MAX_TOKENS)
    train, held_out = split_sentences(documentation_sentences())
    return SearchRows(
        proxy=tokenizer(train[-proxy_sentences:]),
        calibration=tokenizer(train[:calibration_sentences]),
        timing=tokenizer(train[:1], pad_to=ProfileSettings().seq_len),
        held_out=tokenizer(held_out),
    )


def prepared(path: Path) -> onnx.ModelProto:
    """The graph at `path` after ORT's quantization pre-processing (shape inference, folding)."""
    with tempfile.TemporaryDirectory(prefix="slimserve-search-") as tmp:
        target = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(target), skip_symbolic_shape=True)
        return onnx.load(target)


def run_search(
    repository: Path,
    model: str,
    budget: SearchBudget,
    parents: tuple[str, ...] = PARENTS,
    rows: SearchRows | None = None,
) -> SearchResult:
    """The search on `repository/model`'s float parents that exist (module docstring);
    `rows` default to search_rows()."""
    threads = threads_for("cloud-cpu")
    folder = repository / model
    found = {name: folder / name / "model.onnx" for name in parents if (folder / name / "model.onnx").is_file()}
    if model != "minilm":  # its data (sentences, tokenizer, retrieval agreement) is minilm's
        raise RepositoryError(f"--search knows minilm's data only, not model '{model}'")
    if REFERENCE not in found:
        raise RepositoryError(f"{folder / REFERENCE / 'model.onnx'}: no such graph; build the model first")
    rows = rows or search_rows()
    reference = found[REFERENCE].read_bytes()
    search = QuantSearch(
        {name: prepared(path) for name, path in found.items()},
        reference,
        retrieval_scorer(reference, rows.proxy, threads),
        rows.calibration,
        rows.timing,
        budget,
        threads,
    )
    return search.run()


def search_command(args: argparse.Namespace) -> int:
    """Run the search on `args.repository`'s first of `args.models` (default minilm), print
    its front, and write the report when `args.report` is set."""
    from slimserve.variants.search_report import RECIPES, draw, measure, render

    model = (getattr(args, "models", None) or ["minilm"])[0]
    max_size = None if args.max_size_mb is None else int(args.max_size_mb * 1e6)
    budget = SearchBudget(args.time_budget_s, args.max_p95_ms, max_size)
    rows = search_rows()
    result = run_search(args.repository, model, budget, rows=rows)
    for trial in result.front:
        print(f"{trial.name}\tagreement {trial.agreement:.4f}\tspeedup {trial.speedup:.2f}\tp95 {trial.p95_ms:.2f} ms")
    if args.report is None:
        return 0
    threads = threads_for("cloud-cpu")
    folder = args.repository / model
    graphs = {name: ("recipe", (folder / name / "model.onnx").read_bytes()) for name in RECIPES
              if (folder / name / "model.onnx").is_file()}  # fmt: skip
    graphs |= {trial.name: ("search", trial.graph) for trial in result.front}
    reference = (folder / REFERENCE / "model.onnx").read_bytes()
    measured = measure(graphs, reference, rows.proxy, rows.held_out, rows.timing, threads)
    args.report.mkdir(parents=True, exist_ok=True)
    command = "slimserve build --search " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None and k in {"repository", "models", "time_budget_s", "max_p95_ms", "max_size_mb", "report"}
    )
    (args.report / "search.md").write_text(render(measured, result, command, threads) + "\n", encoding="utf-8")
    draw(measured, result, args.report / "search.png")
    return 0
