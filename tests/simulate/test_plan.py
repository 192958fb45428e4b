"""`slimserve plan`: end to end on a rate and on tiny CSV traces, answers monotone where they
must be, bad inputs refused with exit 2 and a message.

A synthetic repository (manifests with made-up profiles, empty graph files: the simulator
reads only the measurements) keeps this a unit test; tiny windows keep it fast. Time is the
simulator's, and the time budget is tested on an injected clock: no wall-clock asserts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slimserve.cli import main
from slimserve.repository.format import HardwareFingerprint
from slimserve.simulate.calibration import CALIBRATED_LOOP_CPU_MS, CALIBRATED_SPEED
from slimserve.simulate.plan import ROUTER, Planner, PlanRequest, PlanResult, Setup, sustained_load
from slimserve.simulate.plan_inputs import PlanError, SloMix, Traffic, rate_trace, read_trace_csv
from slimserve.simulate.plan_report import render_markdown
from slimserve.simulate.trace import ATTRIBUTION

# Variant → (quality, p50 ms at batch 1, at batch 8): fp32 slow and exact, int8 cheaper, distilled cheapest.
VARIANTS = {"fp32": (1.0, 4.0, 24.0), "int8": (0.95, 2.0, 10.0), "distilled": (0.8, 1.0, 5.0)}
FAST = ["--windows", "2", "--arrivals", "60", "--loads", "0.5,1,2"]


def write_repository(root: Path, labels: tuple[str, ...] = ("cloud-cpu", "edge")) -> Path:
    """A repository holding `toy` with VARIANTS, profiled for `labels` (the same times on each)."""
    model = root / "toy"
    model.mkdir(parents=True)
    (model / "model.yaml").write_text(yaml.safe_dump({
        "name": "toy", "task": "classifier", "default_slo_ms": 40.0, "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "quality_metric": {"name": "accuracy"},
    }))  # fmt: skip
    for name, (quality, one_ms, eight_ms) in VARIANTS.items():
        folder = model / name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"")
        profiles = {
            hardware.key: {
                "label": label, "measured_at": "2026-01-01T00:00:00Z", "input_note": "",
                "hardware": hardware.model_dump(),
                "latency": {"1": {"p50_ms": one_ms, "p95_ms": one_ms, "samples": 9},
                            "8": {"p50_ms": eight_ms, "p95_ms": eight_ms, "samples": 9}},
            }
            for label in labels
            # cloud-cpu profiles with every core's threads, edge with one (slimserve.repository.hardware)
            if (hardware := HardwareFingerprint(cpu_model="test", cores=2, isa=[], onnxruntime="1",
                                                threads=1 if label == "edge" else 2))
        }  # fmt: skip
        (folder / "variant.json").write_text(json.dumps({
            "name": name, "kind": name, "onnx_sha256": "0", "built_at": "2026-01-01T00:00:00Z",
            "measurements": {"params": 1, "size_bytes": 1, "quality": {"accuracy": quality},
                             "agreement": {"accuracy": quality}, "eval_items": 1},
            "seed_formulas": {"alpha_params": 1, "beta_params": 0, "alpha_bytes": 1, "beta_bytes": 0},
            "profiles": profiles,
        }))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("plan") / "repo")


@pytest.fixture(scope="module")
def three_core_counts(repo: Path) -> PlanResult:
    """One plan on 1, 2 and 4 cores, shared by the tests that read it (replays cost)."""
    return Planner(request(repo, cores=(1, 2, 4)), progress=lambda line: None).run()


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def request(repo: Path, cores: tuple[int, ...] = (1,), **changes: object) -> PlanRequest:
    traffic = Traffic(rate_trace(300.0, "poisson", 120, seed=1, tokens=0), 300.0, "test")
    fields: dict[str, object] = {
        "repository": repo, "model": "toy", "hardware": ("cloud-cpu", "edge"), "traffic": traffic, "slo": None,
        "target_accuracy": 0.8, "target_slo": 0.9, "cores": cores, "loads_x": (0.5, 1.0, 2.5),
        "windows": 2, "arrivals": 40,
    }  # fmt: skip
    return PlanRequest(**{**fields, **changes})  # type: ignore[arg-type]


# -- end to end ---------------------------------------------------------------------------


def test_plan_on_a_rate_prints_the_answer_and_draws_the_plot(repo: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    png = tmp_path / "plan.png"
    code, out, err = plan(capsys, str(repo), "toy", "--rate", "300", "--cores", "1,2", "--png", str(png),
                          "--target-accuracy", "0.85", "--slo-ms", "20:0.7,60:0.3", *FAST)  # fmt: skip
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## How many cores for 300.0 req/s" in out and "## Sustainable load per policy" in out
    assert "cloud-cpu" in out and "edge" in out
    assert f"speed **{CALIBRATED_SPEED:.2f}**" in out and "Simulated" in out  # the parameters it rests on
    assert f"{CALIBRATED_LOOP_CPU_MS:.1f} ms" in out
    assert "70% of calls 20 ms" in out
    assert "plan: " in err and "s left" in err  # progress with an estimate, on stderr
    assert ATTRIBUTION not in out  # not the Azure trace


def test_plan_on_a_tiny_trace_gives_json(repo: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "arrivals.csv"
    trace.write_text("timestamp_s\n" + "".join(f"{i * 0.01 + (i % 3) * 0.004:.4f}\n" for i in range(80)))
    code, out, err = plan(capsys, str(repo), "toy", "--trace", str(trace), "--hardware-profile", "edge",
                          "--cores", "1,2", "--png", str(tmp_path / "p.png"), "--json", *FAST)  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert document["simulated"] is True and document["complete"] is True
    calibration = document["calibration"]
    assert (calibration["speed"], calibration["loop_cpu_ms"]) == (CALIBRATED_SPEED, CALIBRATED_LOOP_CPU_MS)
    assert calibration["calibrated_defaults"] is True
    assert document["traffic"]["rate_rps"] == pytest.approx(79 / 0.79, rel=0.02)  # the trace's own rate
    assert {c["kind"] for c in document["cells"]} == {"rate", "sweep"}
    assert set(document["fewest_cores"]["edge"]) == {ROUTER, *VARIANTS}
    policies = {s["policy"] for s in document["sustained"]}
    assert policies == {ROUTER, *VARIANTS}


def test_the_azure_format_is_read_and_attributed(repo: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "azure.csv"
    rows = [f"2023-11-16 18:15:{i // 10:02d}.{(i % 10) * 97:03d}0000,{100 + i},20" for i in range(60)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    code, out, err = plan(capsys, str(repo), "toy", "--trace", str(trace), "--rate", "200", "--cores", "1",
                          "--hardware-profile", "cloud-cpu", "--png", str(tmp_path / "p.png"), *FAST)  # fmt: skip
    assert code == 0, err
    assert ATTRIBUTION in out and "200.0 req/s" in out


# -- monotone answers -------------------------------------------------------------------------


def test_more_cores_never_lower_a_pinned_variants_sustainable_load(three_core_counts: PlanResult) -> None:
    result = three_core_counts
    for hardware in ("cloud-cpu", "edge"):
        for variant in VARIANTS:
            rates = [result.sustained(hardware, n, variant) for n in (1, 2, 4)]
            assert all(r is not None for r in rates)
            values = [r.rate_rps for r in rates if r is not None]
            assert values == sorted(values), (hardware, variant, values)


def test_a_higher_target_never_raises_the_sustainable_load(repo: Path) -> None:
    result = Planner(request(repo), progress=lambda line: None).run()
    capacity = result.capacity_rps[("cloud-cpu", 1)]
    for policy in result.policies("cloud-cpu"):
        cells = result.sweep("cloud-cpu", 1, policy)
        for targets in ([(0.0, s) for s in (0.5, 0.8, 0.9, 0.95, 0.99)], [(a, 0.5) for a in (0.5, 0.7, 0.8, 0.9)]):
            rates = [sustained_load(cells, a, s, capacity) for a, s in targets]
            values = [r.rate_rps for r in rates if r is not None]
            assert values == sorted(values, reverse=True), (policy, targets, values)


def test_the_fewest_cores_meet_the_target_and_one_fewer_does_not(three_core_counts: PlanResult) -> None:
    result = three_core_counts
    fewest = result.fewest_cores("cloud-cpu", "fp32")
    assert fewest is not None
    cell = result.at_rate("cloud-cpu", fewest, "fp32")
    assert cell is not None and cell.meets(0.8, 0.9)
    for fewer in (n for n in (1, 2, 4) if n < fewest):
        below = result.at_rate("cloud-cpu", fewer, "fp32")
        assert below is not None and not below.meets(0.8, 0.9)


def test_edge_boxes_add_up_and_the_machine_pools_its_cores(repo: Path) -> None:
    planner = Planner(request(repo, cores=(1, 4)), progress=lambda line: None)
    assert planner.capacity[("edge", 4)] == pytest.approx(4 * planner.capacity[("edge", 1)])
    assert Setup("edge", 4, 4).params(planner.request.calibration).cores == 1  # each box alone
    assert Setup("cloud-cpu", 4, 2).params(planner.request.calibration).session_threads == 2


def test_the_time_budget_stops_early_with_what_it_has(repo: Path) -> None:
    ticks: Iterator[float] = iter(float(t) for t in range(10_000))
    lines: list[str] = []
    result = Planner(request(repo, max_seconds=12.0), progress=lines.append, clock=lambda: next(ticks)).run()
    assert not result.complete and 0 < len(result.cells) < 10
    assert any("time budget" in line for line in lines)
    assert "**Incomplete**" in render_markdown(result) and "not run" in render_markdown(result)


def test_a_minimum_quality_leaves_variants_out(repo: Path) -> None:
    planner = Planner(request(repo, min_quality=0.9), progress=lambda line: None)
    assert [s.name for s in planner.models["edge"].specs] == ["fp32", "int8"]
    assert "distilled" in " ".join(planner.models["edge"].notes)


# -- inputs -----------------------------------------------------------------------------------


def test_slo_mixes_parse_and_draw_their_shares() -> None:
    import numpy as np

    mix = SloMix.parse("55:0.7,183:0.3")
    assert mix.classes == ((55.0, 0.7), (183.0, 0.3))
    drawn = mix.draw(10_000, np.random.default_rng(0))
    assert (drawn == 55.0).mean() == pytest.approx(0.7, abs=0.02)
    assert SloMix.parse("100").classes == ((100.0, 1.0),)
    for bad in ("55:0.7,183:0.2", "fast:1", "55:0", "-5:1"):
        with pytest.raises(PlanError, match="--slo-ms"):
            SloMix.parse(bad)


def test_a_malformed_trace_names_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s\n0.0\n0.5\nsoon\n1.5\n")
    with pytest.raises(PlanError, match=r"t\.csv:4: not an arrival time"):
        read_trace_csv(trace)
    trace.write_text("when\n1\n2\n")
    with pytest.raises(PlanError, match="expected a 'timestamp_s' column"):
        read_trace_csv(trace)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["toy2", "--rate", "10"], "no model 'toy2'"),
        (["toy", "--rate", "10", "--slo-ms", "55:0.5"], "sum to 0.5"),
        (["toy"], "give the traffic"),
        (["toy", "--rate", "10", "--cores", "1,two"], "--cores: 'two' is not a number"),
        (["toy", "--rate", "10", "--target-slo", "95"], "--target-slo must be a fraction"),
        (["toy", "--rate", "10", "--variants", "int3"], "serves no variant int3"),
        (["toy", "--rate", "10", "--min-quality", "0.99", "--variants", "int8"], "reaches --min-quality"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(repo: Path, capsys, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, _out, err = plan(capsys, str(repo), *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_missing_hardware_profile_says_which_exist_and_how_to_add_one(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    repo = write_repository(tmp_path / "repo", labels=("cloud-cpu",))
    code, _out, err = plan(capsys, str(repo), "toy", "--rate", "10", "--hardware-profile", "edge")
    assert code == 2
    assert "no 'edge' latency profile" in err and "cloud-cpu (2 threads)" in err
    assert f"slimserve profile {repo} --hardware-profile edge" in err


def test_a_malformed_trace_exits_2_naming_the_line(repo: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s\n0\n1\n2\nx\n")
    code, _out, err = plan(capsys, str(repo), "toy", "--trace", str(trace))
    assert code == 2 and f"{trace}:5:" in err


def test_the_answer_lists_every_pinned_variant_that_meets_the_target_at_the_routers_core_count(
    three_core_counts: PlanResult,
) -> None:
    result, text = three_core_counts, render_markdown(three_core_counts)
    for hardware in ("cloud-cpu", "edge"):
        fewest = result.fewest_cores(hardware, ROUTER)
        if fewest is None:
            continue
        line = next(x for x in text.splitlines() if x.startswith(f"- **{hardware}: {fewest} core(s)**"))
        for variant in VARIANTS:
            cell = result.at_rate(hardware, fewest, variant)
            assert cell is not None
            # also those that would meet it with fewer cores (an earlier report left them out)
            assert (variant in line.split("there:")[1]) == cell.meets(0.8, 0.9), (hardware, variant, line)
