"""tools/compare_variants.py on a real built model: every variant timed in every round, the
speedup a paired mean over rounds with its interval."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.compare_variants import main, speedup


def test_speedup_is_the_mean_of_the_rounds_ratios_with_its_interval() -> None:
    gain = speedup([10.0, 12.0, 11.0], [5.0, 5.0, 5.5])
    assert gain.mean == pytest.approx((2.0 + 2.4 + 2.0) / 3) and gain.n == 3 and 0 < gain.half_width < 1
    assert speedup([4.0, 4.0], [2.0, 2.0]).half_width == 0  # rounds that agree: no spread


def test_the_table_has_a_row_and_an_interval_for_every_variant(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [str(repository / "digits"), "fp32", "int8", "--rounds", "3", "--seconds", "0.2", "--threads", "1"]
    assert main(arguments) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["fp32", "int8"]
    fp32_gain = re.search(r"\| ([\d.]+)× ± ([\d.]+) \|$", rows[0])
    assert fp32_gain is not None and float(fp32_gain.group(1)) == 1.0 and float(fp32_gain.group(2)) == 0.0
    assert re.search(r"\| [\d.]+× ± [\d.]+ \|$", rows[1])
