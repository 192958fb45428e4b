"""Build progress lines on a fake clock: the format, the rate limit, the estimate, long gaps."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from slimserve.variants.progress import ModelProgress, ProgressLine
from tests.fake_clock import FakeClock

INTERVAL_S = 15.0


class _Lines(logging.Handler):
    """Every progress line a reporter writes, parsed back (the server's parser)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[ProgressLine] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = ProgressLine.parse(record.getMessage())
        assert line is not None, record.getMessage()
        self.lines.append(line)


@pytest.fixture
def written(request: pytest.FixtureRequest) -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger(f"tests.progress.{request.node.name}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def progress(clock: FakeClock, written: _Lines, request: pytest.FixtureRequest) -> ModelProgress:
    return ModelProgress("digits", clock, INTERVAL_S, logging.getLogger(f"tests.progress.{request.node.name}"))


def test_a_line_reads_back_as_written_even_after_a_log_prefix() -> None:
    line = ProgressLine("minilm", ("pruned",), "prune", 41.0, 95.0, step=2, steps=3, unit="epoch", done=4, total=10)
    text = line.render()
    assert text == "progress model=minilm variant=pruned stage=prune step=2/3 epoch=4/10 elapsed_s=41 remaining_s=95"
    assert ProgressLine.parse(f"INFO slimserve.variants.progress: {text}") == line
    several = ProgressLine("digits", ("fp32", "int8"), "profile", 3.0)
    assert several.render() == "progress model=digits variant=fp32,int8 stage=profile elapsed_s=3"
    assert ProgressLine.parse(several.render()) == several


@pytest.mark.parametrize(
    "text",
    [
        "digits: published fp32, int8 after 3 s",
        "progress model=digits variant=pruned elapsed_s=3",  # no stage
        "progress model=digits variant=pruned stage=prune elapsed_s=soon",
        "progress model=digits variant=pruned stage=prune step=2/x elapsed_s=3",
        "progress model=digits variant=pruned stage=prune elapsed_s=3 remaining_s=",
        "train:  40%|####      | 4/10 [00:02<00:03, progress model=digits",
    ],
)
def test_what_is_not_a_whole_progress_line_is_ignored(text: str) -> None:
    assert ProgressLine.parse(text) is None


def test_changes_are_written_at_once_and_epochs_at_most_once_an_interval(
    progress: ModelProgress, clock: FakeClock, written: _Lines
) -> None:
    progress.stage("fp32", "train")
    progress.loop(10)
    for _ in range(10):
        clock.advance(4.0)
        progress.tick()
    progress.stage("fp32", "made")
    seen = [(line.stage, line.done, line.elapsed_s) for line in written.lines]
    # Ticks at 4, 8, … s: a line at 16 s (≥ 15 s after the loop's line at 0 s), then at 32 s.
    assert seen == [("train", 0, 0.0), ("train", 0, 0.0), ("train", 4, 16.0), ("train", 8, 32.0), ("made", 0, 0.0)]


def test_a_step_is_a_change(progress: ModelProgress, clock: FakeClock, written: _Lines) -> None:
    progress.stage("pruned", "prune")
    progress.step(1, 2)
    clock.advance(1.0)
    progress.step(2, 2)  # one second later, and still written
    assert [(line.step, line.steps) for line in written.lines] == [(0, 0), (1, 2), (2, 2)]


def test_the_estimate_is_the_mean_epoch_time_times_the_epochs_left(
    progress: ModelProgress, clock: FakeClock, written: _Lines
) -> None:
    progress.stage("distilled", "distill")
    clock.advance(30.0)  # building the student: not an epoch
    progress.loop(8)
    assert progress.line().remaining_s is None  # no epoch measured yet
    for seconds in (10.0, 12.0, 8.0):
        clock.advance(seconds)
        progress.tick()
    line = progress.line()
    assert (line.unit, line.done, line.total) == ("epoch", 3, 8)
    assert line.elapsed_s == 60.0
    assert line.remaining_s == pytest.approx(10.0 * 5)


def test_a_stage_in_steps_counts_every_steps_epochs_and_not_the_pruning_between(
    progress: ModelProgress, clock: FakeClock
) -> None:
    progress.stage("pruned", "prune")
    progress.expect(3 * 4)
    progress.step(1, 3)
    clock.advance(100.0)  # the pruning step itself
    progress.loop(4)
    for _ in range(4):
        clock.advance(5.0)
        progress.tick()
    assert progress.line().remaining_s == pytest.approx(5.0 * 8)
    progress.step(2, 3)
    clock.advance(100.0)
    progress.loop(4)
    clock.advance(3.0)
    progress.tick()
    line = progress.line()
    assert (line.step, line.done, line.total) == (2, 1, 4)
    assert line.remaining_s == pytest.approx((20.0 + 3.0) / 5 * 7)


def test_a_part_epoch_counts_as_its_share_in_time_and_in_what_is_left(
    progress: ModelProgress, clock: FakeClock
) -> None:
    """Half an epoch of fine-tuning after each of two pruning steps, then three (minilm's
    default schedule): an epoch takes 10 s throughout, and the estimate says so."""
    progress.stage("pruned", "prune")
    progress.expect(0.5 + 0.5 + 3)
    for step in (1, 2):
        progress.step(step, 3)
        clock.advance(100.0)  # the pruning itself
        progress.loop(1, units=0.5)
        clock.advance(5.0)
        progress.tick()
        assert progress.line().remaining_s == pytest.approx(10.0 * (4 - 0.5 * step))
    progress.step(3, 3)
    progress.loop(3)
    clock.advance(10.0)
    progress.tick()
    line = progress.line()
    assert (line.done, line.total, line.remaining_s) == (1, 3, pytest.approx(20.0))
    # Without `expect`, the running loop's own units: 1.5 epochs, one done, half of one left.
    progress.stage("distilled", "distill")
    progress.loop(2, units=1.5)
    clock.advance(10.0)
    progress.tick()
    assert progress.line().remaining_s == pytest.approx(5.0)


def test_without_expect_the_loops_seen_so_far_count(progress: ModelProgress, clock: FakeClock) -> None:
    progress.stage("int8", "int8")
    progress.loop(4, unit="candidate")
    clock.advance(2.0)
    progress.tick()
    line = progress.line()
    assert (line.unit, line.done, line.total, line.remaining_s) == ("candidate", 1, 4, pytest.approx(6.0))


def test_a_budgeted_stage_estimates_its_budget_left(progress: ModelProgress, clock: FakeClock) -> None:
    progress.stage(["fp32", "int8"], "profile", budget_s=9.0)
    clock.advance(4.0)
    assert progress.line().remaining_s == pytest.approx(5.0)
    clock.advance(60.0)  # over budget (a slow model's minimum repetitions): never negative
    assert progress.line().remaining_s == 0.0


def test_a_new_stage_starts_its_own_clock_and_estimate(progress: ModelProgress, clock: FakeClock) -> None:
    progress.stage("fp32", "train")
    progress.loop(2)
    clock.advance(10.0)
    progress.tick()
    progress.stage("int8", "int8")
    line = progress.line()
    assert (line.variants, line.stage, line.elapsed_s) == (("int8",), "int8", 0.0)
    assert (line.remaining_s, line.unit, line.done) == (None, "", 0)


def test_a_gap_of_hours_is_counted_as_it_was_and_writes_at_once(
    progress: ModelProgress, clock: FakeClock, written: _Lines
) -> None:
    progress.stage("distilled", "distill")
    progress.loop(4)
    clock.advance(10.0)
    progress.tick()
    clock.advance(3 * 3600.0)  # the machine slept (or the build was stopped) inside epoch 2
    progress.tick()
    line = written.lines[-1]  # written at once: the rate limit does not stall after a gap
    assert (line.done, line.elapsed_s) == (2, 10.0 + 3 * 3600.0)
    assert line.remaining_s == pytest.approx((10.0 + 3 * 3600.0) / 2 * 2)
    clock.advance(10.0)
    progress.tick()
    assert len(written.lines) == 3  # back to one line per interval after the gap
    assert progress.line().remaining_s == pytest.approx((20.0 + 3 * 3600.0) / 3)


def test_a_line_aged_by_hours_keeps_counting_and_never_goes_negative() -> None:
    line = ProgressLine("digits", ("pruned",), "prune", 41.0, 95.0, unit="epoch", done=3, total=8)
    assert line.aged(30.0).elapsed_s == 71.0 and line.aged(30.0).remaining_s == 65.0
    later = line.aged(5 * 3600.0)
    assert (later.elapsed_s, later.remaining_s) == (41.0 + 5 * 3600.0, 0.0)
    assert ProgressLine("digits", ("fp32",), "load", 2.0).aged(3600.0).remaining_s is None
    assert line.aged(-5.0) == line  # a clock read before the line was stamped ages nothing
