"""Triton's ModelConfig RPC and numbered versions: what Triton's own clients (tritonclient,
perf_analyzer) need before they send anything, checked against a real server.

The messages are read through tritonclient's own stubs: slimserve's generated `inference`
stubs cannot share a process with them (the same proto package), so this module imports
neither `protos.inference_pb2` nor `server.triton_config`."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from loadtest.serving import RunningServer
from slimserve.repository.format import ModelEntry, version_numbers_kept
from slimserve.repository.sessions import make_session
from slimserve.server.core.versions import variant_named, version_numbers
from slimserve.variants.data import load_digits_split

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = Path(os.environ.get("SLIMSERVE_PERF_ANALYZER", ROOT.parent / "shared" / "tools" / "perf-analyzer"))


def test_versions_are_numbered_as_published_and_both_spellings_resolve(digits: ModelEntry) -> None:
    numbers = version_numbers(digits)
    assert sorted(numbers.values()) == list(range(1, len(digits.candidates) + 1))
    assert numbers == digits.config.version_numbers  # the build wrote them into model.yaml
    assert (numbers["fp32"], numbers["int8"]) == (1, 2)  # published first (the background build's first step)
    for name, number in numbers.items():
        assert variant_named(digits, str(number)) == name
        assert variant_named(digits, f"0{number}") == name
        assert variant_named(digits, name) == name
    assert variant_named(digits, str(len(numbers) + 1)) == str(len(numbers) + 1)  # no such number: NOT_FOUND later
    assert variant_named(digits, "fp8") == "fp8"


def test_a_version_number_never_changes_meaning_when_variants_are_added(digits: ModelEntry) -> None:
    """The hardening issue's L8: numbered by name, adding `distilled` moved `fp32` from 1 to 2."""
    first = version_numbers_kept(None, ["fp32", "int8"])
    later = version_numbers_kept(first, ["fp32", "int8", "distilled", "aaa-new"])
    assert later == {"fp32": 1, "int8": 2, "distilled": 3, "aaa-new": 4}
    assert version_numbers_kept({"fp32": 1, "gone": 2}, ["fp32", "int8"]) == {"fp32": 1, "gone": 2, "int8": 3}
    # A hand-made folder that numbers only some: the rest follow, by name.
    partly = digits.model_copy(update={"config": digits.config.model_copy(update={"version_numbers": {"int8": 7}})})
    numbers = version_numbers(partly)
    assert numbers["int8"] == 7
    assert [numbers[name] for name in sorted(set(digits.candidates) - {"int8"})] == list(
        range(8, 8 + len(digits.candidates) - 1)
    )
    with pytest.raises(ValueError, match="share a version number"):
        digits.config.model_validate({**digits.config.model_dump(), "version_numbers": {"fp32": 1, "int8": 1}})


def test_the_config_has_dims_without_the_batch_and_lists_the_served_variants(
    server: RunningServer, digits: ModelEntry
) -> None:
    with triton.InferenceServerClient(server.address) as client:
        config = client.get_model_config("digits").config
        with pytest.raises(triton.InferenceServerException, match="NOT_FOUND"):
            client.get_model_config("digits", "fp8")
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == digits.config.max_batch_size
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]
    assert config.HasField("dynamic_batching")
    numbers = version_numbers(digits)
    assert sorted(config.version_policy.specific.versions) == sorted(numbers[name] for name in digits.variants)
    listed = dict(item.split("=") for item in config.parameters["variants"].string_value.split(","))
    assert {name: int(number) for name, number in listed.items()} == {name: numbers[name] for name in digits.variants}


def test_tritonclient_reads_the_config_and_calls_a_variant_by_its_number(
    server: RunningServer, digits: ModelEntry
) -> None:
    number = str(version_numbers(digits)["int8"])
    images = load_digits_split()[1].inputs["images"][:3]
    with triton.InferenceServerClient(server.address) as client:
        before = client.get_inference_statistics("digits", number).model_stats
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor], model_version=number)
        after = client.get_inference_statistics("digits", number).model_stats
    assert result.get_response().parameters["variant"].string_param == "int8"
    expected = make_session(str(digits.variants["int8"].onnx_path), 1).run(None, {"images": images})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)
    # Statistics answer in the spelling asked for (perf_analyzer parses it as an integer),
    # with the three compute counts equal (perf_analyzer refuses them otherwise).
    assert [s.version for s in after] == [number]
    stats = after[0].inference_stats
    assert stats.success.count == before[0].inference_stats.success.count + 1
    assert stats.compute_input.count == stats.compute_infer.count == stats.compute_output.count == stats.success.count
    assert stats.compute_input.ns > before[0].inference_stats.compute_input.ns


def test_statistics_without_a_version_spell_every_version_as_a_number(
    server: RunningServer, digits: ModelEntry
) -> None:
    numbers = version_numbers(digits)
    images = load_digits_split()[1].inputs["images"][:1]
    with triton.InferenceServerClient(server.address) as client:
        before = {s.version: s for s in client.get_inference_statistics("digits").model_stats}
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor])  # routed: no version
        after = {s.version: s for s in client.get_inference_statistics("digits").model_stats}
        everything = client.get_inference_statistics().model_stats
    # perf_analyzer without -x parses every entry's version with std::stoll (module docstring
    # of server/transport/inference.py); the variant each number stands for is in ModelConfig.
    assert everything and all(s.version == str(int(s.version)) for s in everything)
    assert list(after) == [str(n) for n in sorted(numbers[name] for name in digits.variants)]
    served = str(numbers[result.get_response().parameters["variant"].string_param])
    assert after[served].inference_stats.success.count == before[served].inference_stats.success.count + 1


def _perf_analyzer(server: RunningServer, report: Path, *version: str) -> list[dict[str, str]]:
    """perf_analyzer on digits at concurrency 1 and 2 (`version`: `-x N`, or none: routed);
    the rows of its CSV report, after asserting that it exited 0."""
    finished = subprocess.run(
        [str(PERF_ANALYZER), "-m", "digits", *version, "-i", "grpc", "-u", server.address,
         "--concurrency-range", "1:2", "-p", "1000", "-f", str(report),
         # What is tested is that it measures slimserve at all, not how steady a shared 2-core
         # machine is: its default 10 % stability over 3 of 10 windows failed once in CI.
         "--stability-percentage", "100", "--max-trials", "20"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = list(csv.DictReader(report.open()))
    assert sorted(row["Concurrency"] for row in rows) == ["1", "2"]  # rows come by rising throughput
    assert all(float(row["Inferences/Second"]) > 0 for row in rows)
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=f"Triton's perf_analyzer wrapper not found at {PERF_ANALYZER}")
def test_perf_analyzer_measures_slimserve_unmodified(server: RunningServer, digits: ModelEntry, tmp_path: Path) -> None:
    rows = _perf_analyzer(server, tmp_path / "perf.csv", "-x", str(version_numbers(digits)["distilled"]))
    for row in rows:
        assert int(row["Server Compute Infer"]) > 0  # it read slimserve's own statistics, per window


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=f"Triton's perf_analyzer wrapper not found at {PERF_ANALYZER}")
def test_perf_analyzer_measures_a_routed_model_without_a_version(server: RunningServer, tmp_path: Path) -> None:
    # Without -x it reads the statistics of every version and parses each as an integer (it
    # aborted on "fp32"); its server-side columns are then one variant's share (module
    # docstring of server/transport/inference.py), so only its own measurements are checked.
    _perf_analyzer(server, tmp_path / "perf.csv")
