"""Build progress as log lines a person reads and a program parses, one format for both.

A build of the default repository takes a quarter of an hour on two cores; its progress
bars (tqdm) are for a terminal and say nothing to a log. `ModelProgress` writes, through
`logging` at INFO (logger `slimserve.variants.progress`), lines like

    progress model=digits variant=pruned stage=prune step=2/3 epoch=4/10 elapsed_s=41 remaining_s=95

- `variant`: the variant(s) the work is for, comma-separated (evaluating, profiling and
  measuring work on every variant of a publication at once).
- `stage`: what is being done for them: `train` (the classifier teacher), `export` (a
  trained teacher), `load` (the encoder's weights and data), `distill`, `prune`, `lowrank`,
  `int8`, `int4`, `qat` (the chain step that makes the variant from its parent, variants.chains),
  `made` (made, waiting for its publication), then `evaluate`, `profile`, `measure`.
- `step=k/n`: the step of a stage in steps (pruning, fine-tuned after each step).
- one counter `<unit>=i/n` of the loop running now: `epoch` (a training loop), `candidate`
  (int8 settings tried), `graph` (variants measured); absent outside loops.
- `elapsed_s`: seconds since the stage began. `remaining_s`: an *estimate* of the seconds
  the stage still needs (absent when there is none yet): for counted work, the mean time of
  the units done so far in this stage times the units left in it (every step's epochs for
  pruning); for profiling, its time budget minus the elapsed time. It leaves out the work
  between loops (a pruning step, an export) and the stages still to come.

Rate: a line at every change (a stage, a step, a loop starting) and otherwise at most one
every PROGRESS_INTERVAL_S per model. The server's background build relays these lines and
parses them (`ProgressLine.parse`) to report each variant still being built in ListVariants.
This module is torch-free: the server imports it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)
Clock = Callable[[], float]
PROGRESS_INTERVAL_S = 15.0  # at most one line per model this often, changes aside
PREFIX = "progress"
_FIELD = re.compile(r"(\w+)=(\S+)")
_COUNT = re.compile(r"(\d+)/(\d+)")
_LINE = re.compile(rf"\b{PREFIX} (model=\S+(?: \w+=\S+)*)\s*$")


@dataclass(frozen=True)
class ProgressLine:
    """One progress line: what the build is doing for `variants` of `model`, and how far it is."""

    model: str
    variants: tuple[str, ...]
    stage: str
    elapsed_s: float
    remaining_s: float | None = None
    step: int = 0  # step k of `steps`; 0: the stage has no steps
    steps: int = 0
    unit: str = ""  # what done/total count; "": no loop running
    done: int = 0
    total: int = 0

    def render(self) -> str:
        fields = [f"model={self.model}", f"variant={','.join(self.variants)}", f"stage={self.stage}"]
        if self.steps:
            fields.append(f"step={self.step}/{self.steps}")
        if self.unit:
            fields.append(f"{self.unit}={self.done}/{self.total}")
        fields.append(f"elapsed_s={self.elapsed_s:.0f}")
        if self.remaining_s is not None:
            fields.append(f"remaining_s={self.remaining_s:.0f}")
        return f"{PREFIX} {' '.join(fields)}"

    @classmethod
    def parse(cls, text: str) -> ProgressLine | None:
        """The progress line in `text` (a log prefix before it is fine); None if there is none
        or it is malformed: the text comes from another process and must never raise here."""
        match = _LINE.search(text)
        if match is None:
            return None
        fields = dict(_FIELD.findall(match.group(1)))
        try:
            line = cls(
                model=fields.pop("model"),
                variants=tuple(fields.pop("variant").split(",")),
                stage=fields.pop("stage"),
                elapsed_s=float(fields.pop("elapsed_s")),
                remaining_s=float(fields.pop("remaining_s")) if "remaining_s" in fields else None,
            )
            if "step" in fields:
                step, steps = _count(fields.pop("step"))
                line = replace(line, step=step, steps=steps)
            counters = [(unit, _count(value)) for unit, value in fields.items() if _COUNT.fullmatch(value)]
            if counters:
                unit, (done, total) = counters[0]
                line = replace(line, unit=unit, done=done, total=total)
        except (KeyError, ValueError):
            return None
        return line

    def aged(self, seconds: float) -> ProgressLine:
        """This line as it stands `seconds` after it was written: the stage has run that much
        longer, and the estimate left is that much shorter (never below 0)."""
        seconds = max(0.0, seconds)
        remaining = None if self.remaining_s is None else max(0.0, self.remaining_s - seconds)
        return replace(self, elapsed_s=self.elapsed_s + seconds, remaining_s=remaining)


def _count(value: str) -> tuple[int, int]:
    match = _COUNT.fullmatch(value)
    if match is None:
        raise ValueError(value)
    return int(match.group(1)), int(match.group(2))


class ModelProgress:
    """One model's build progress, written as ProgressLines (one reporter per model).

    The pipeline calls `stage` when it starts on a variant (or a publication), `step` when
    a stage in steps moves on, `loop(total, unit)` when a counted loop starts and `tick`
    after each unit of it. Changes are always written; ticks at most every `interval_s`.
    The estimate (`remaining_s`) is the mean time of the units the stage has counted so far
    (the time from a loop's start or its previous unit to each unit's end) times the units
    it has left: `expect` gives a stage's total across its steps, otherwise the loops seen
    so far count. A loop's last unit may be partial (half an epoch of fine-tuning:
    `loop(..., units=)`): it counts as the share of a unit it is, in time and in what is left.
    A stage with a time budget (`stage(..., budget_s=)`, profiling) estimates budget minus
    elapsed. Times come from `clock`, so a test can jump hours.
    """

    def __init__(
        self,
        model: str,
        clock: Clock = time.monotonic,
        interval_s: float = PROGRESS_INTERVAL_S,
        logger: logging.Logger = log,
    ) -> None:
        self.model = model
        self._clock = clock
        self._interval_s = interval_s
        self._log = logger
        self._last_line_s: float | None = None
        self._start_stage((), "", None)

    def _start_stage(self, variants: tuple[str, ...], stage: str, budget_s: float | None) -> None:
        self._variants, self._stage, self._budget_s = variants, stage, budget_s
        self._stage_started_s = self._clock()
        self._step = self._steps = 0
        self._unit, self._loop_done, self._loop_total = "", 0, 0
        self._expected: float | None = None  # units in the whole stage, when known ahead
        self._units_done = 0.0  # counted in this stage, every loop (a partial unit as its share)
        self._loop_units = 0.0  # what the running loop's `total` come to (its last may be partial)
        self._unit_s = 0.0  # time spent on them
        self._mark_s = self._stage_started_s  # where the unit now running began

    def stage(self, variants: str | Sequence[str], stage: str, *, budget_s: float | None = None) -> None:
        """A new stage for `variants` (a name or several); `budget_s`: the time it is given."""
        self._start_stage((variants,) if isinstance(variants, str) else tuple(variants), stage, budget_s)
        self._write()

    def expect(self, units: float) -> None:
        """The stage will count `units` in all (every step's epochs), for the estimate."""
        self._expected = units

    def step(self, step: int, steps: int) -> None:
        """Step `step` of `steps` of the stage begins (a change: written at once)."""
        self._step, self._steps = step, steps
        self._unit, self._loop_done, self._loop_total = "", 0, 0
        self._loop_units = 0.0
        self._write()

    def loop(self, total: int, unit: str = "epoch", units: float | None = None) -> None:
        """A loop of `total` units begins (a change: written at once); `units`: what they come
        to where the last is partial (1.5 epochs: `loop(2, units=1.5)`)."""
        self._unit, self._loop_done, self._loop_total = unit, 0, total
        self._loop_units = float(total) if units is None else units
        self._mark_s = self._clock()
        self._write()

    def tick(self) -> None:
        """One unit of the running loop is done (the last one, the part of a unit the loop's
        `units` leave for it)."""
        now = self._clock()
        self._unit_s += now - self._mark_s
        self._mark_s = now
        last = self._loop_done + 1 == self._loop_total
        share = self._loop_units - (self._loop_total - 1) if last else 1.0
        self._units_done += share
        self._loop_done += 1
        if self._last_line_s is None or now - self._last_line_s >= self._interval_s:
            self._write()

    def line(self) -> ProgressLine:
        """Where the model's build stands now."""
        now = self._clock()
        return ProgressLine(
            model=self.model,
            variants=self._variants,
            stage=self._stage,
            elapsed_s=max(0.0, now - self._stage_started_s),
            remaining_s=self._remaining_s(now),
            step=self._step,
            steps=self._steps,
            unit=self._unit,
            done=self._loop_done,
            total=self._loop_total,
        )

    def _remaining_s(self, now: float) -> float | None:
        if self._budget_s is not None:
            return max(0.0, self._budget_s - (now - self._stage_started_s))
        if not self._units_done:
            return None  # nothing measured yet
        # Units of earlier loops (done) plus this loop's total, unless the stage said more.
        loop_units_done = self._loop_units if self._loop_done == self._loop_total else float(self._loop_done)
        expected = self._expected or self._units_done - loop_units_done + self._loop_units
        return self._unit_s / self._units_done * max(0, expected - self._units_done)

    def _write(self) -> None:
        self._last_line_s = self._clock()
        self._log.info("%s", self.line().render())
