"""Shared fixtures: tiny but real builds of the built-in models, made once per session."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from loadtest.serving import RunningServer
from slimserve.repository.format import ModelEntry
from slimserve.repository.profile import ProfileSettings
from slimserve.variants.build import build_model
from slimserve.variants.recipes import (
    ClassifierDistill,
    ClassifierPrune,
    ClassifierRecipe,
    EncoderDistill,
    EncoderPrune,
    EncoderPruneStep,
    EncoderRecipe,
)

QUICK_PROFILE = ProfileSettings(batch_sizes=[1, 4], seconds_per_batch_size=0.1, seq_len=16)
QUICK_TRAIN_ROWS = 256  # of digits' ~1,400 training rows


def tiny_digits_recipe(
    name: str = "digits", entry_point: str = "slimserve.variants.models.digits:spec"
) -> ClassifierRecipe:
    return ClassifierRecipe(
        name=name,
        entry_point=entry_point,
        teacher_epochs=6,
        calibration_rows=32,
        selection_rows=64,
        prune=ClassifierPrune(keep_fractions=[0.75, 0.5], finetune_epochs=1),
        distill=ClassifierDistill(epochs=3),
        profile=QUICK_PROFILE,
    )


def quick_digits_recipe() -> ClassifierRecipe:
    """`tiny_digits_recipe` on a fifth of the training rows, one low-rank fine-tuning epoch:
    for tests of what happens around a build (stages, publication, serving), not of the
    quality it reaches (CI's slowest tests were these builds)."""
    recipe = tiny_digits_recipe()
    return recipe.model_copy(
        update={"max_train_rows": QUICK_TRAIN_ROWS, "lowrank": recipe.lowrank.model_copy(update={"finetune_epochs": 1})}
    )


def tiny_minilm_recipe() -> EncoderRecipe:
    return EncoderRecipe(
        train_sentences=64,
        eval_sentences=48,
        selection_sentences=16,
        max_tokens=32,
        prune=EncoderPrune(steps=[EncoderPruneStep(heads=8, ffn=1024), EncoderPruneStep(heads=6, ffn=768)]),
        distill=EncoderDistill(keep_layers=[1, 3, 5], epochs=1),
        profile=QUICK_PROFILE,
    )


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every test process of this run sees: under pytest-xdist (`make test` runs two
    processes) the workers' common parent, otherwise the session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding tiny builds of both built-in models, built once per run: the first
    test process to need it builds it under a lock while the other waits, then both read it.
    (Built twice at once, on two cores, each build took 2.5 times as long.) No test writes to
    it: a test that changes files works on a copy (`digits_repo`)."""
    shared = _run_folder(tmp_path_factory)
    repo, built = shared / "repo", shared / "repo.built"
    with open(shared / "repo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        if not built.exists():
            shutil.rmtree(repo, ignore_errors=True)  # what a process that failed mid-build left
            repo.mkdir()
            build_model(tiny_digits_recipe(), repo)
            build_model(tiny_minilm_recipe(), repo)
            built.touch()
    return repo


@pytest.fixture(autouse=True)
def _machine_share(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under pytest-xdist, a test marked `quiet` has the machine to itself: it takes the run's
    lock exclusively, every other test shared, so it starts once the other process's test is
    over and that process starts no test until it is done. (For tests whose subject is how an
    idle machine behaves, or signals timed against a process's start.)"""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    quiet = request.node.get_closest_marker("quiet") is not None
    with open(_run_folder(tmp_path_factory) / "quiet.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if quiet else fcntl.LOCK_SH)
        yield


@pytest.fixture(scope="session")
def digits(repository: Path) -> ModelEntry:
    from slimserve.repository.format import load_model

    return load_model(repository / "digits")


@pytest.fixture(scope="session")
def minilm(repository: Path) -> ModelEntry:
    from slimserve.repository.format import load_model

    return load_model(repository / "minilm")


@pytest.fixture
def digits_repo(repository: Path, tmp_path: Path) -> Path:
    """A copy of the tiny repository holding digits alone, for a test that changes its files."""
    target = tmp_path / "repo"
    shutil.copytree(repository / "digits", target / "digits")
    return target


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real `slimserve serve` subprocess over the tiny repository, shared by the session."""
    running = RunningServer(repository, tmp_path_factory.mktemp("server"))
    yield running
    assert running.stop() == 0


# -- tiers ------------------------------------------------------------------------------
# Every test gets one tier marker, by what it costs (PyTriton's grouping): `unit` runs in
# seconds with no server and no model build; `integration` starts real servers or needs the
# session's tiny model build; `slow` runs Prometheus, Locust or whole builds. `make test`
# runs all three and prints each tier's time; `make test-unit` etc. run one.
TIERS = ("unit", "integration", "slow")
SLOW_MODULES = {"test_prometheus", "test_locust", "test_build_missing"}
BUILT_FIXTURES = {"server", "repository", "digits", "minilm"}
SERVER_STARTERS = ("RunningServer(", "server_process(")


def _tier(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
    if item.get_closest_marker("slow") or name in SLOW_MODULES:
        return "slow"
    if BUILT_FIXTURES & set(getattr(item, "fixturenames", ())) or (module is not None and _starts_servers(module)):
        return "integration"
    return "unit"


@functools.cache
def _starts_servers(module: ModuleType) -> bool:
    """Whether a test module starts servers itself (read once per module, not per test)."""
    source = Path(module.__file__).read_text() if module.__file__ else ""
    return any(starter in source for starter in SERVER_STARTERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seconds = dict.fromkeys(TIERS, 0.0)
    counts = dict.fromkeys(TIERS, 0)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) is None or not hasattr(report, "keywords"):
                continue  # not a test phase's report (deselected items and collection reports sit there too)
            tier = next((t for t in TIERS if t in report.keywords), None)
            if tier is None:
                continue
            seconds[tier] += getattr(report, "duration", 0.0)
            counts[tier] += report.when == "call"
    line = ", ".join(f"{tier} {counts[tier]} tests {seconds[tier]:.0f} s" for tier in TIERS)
    terminalreporter.write_line(
        f"time by tier: {line} (summed over the test processes; setup included: the tiny model build counts "
        "once, and the wait for it in the other process too)"
    )
