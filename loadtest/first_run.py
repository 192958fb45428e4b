"""Clean clone → `make run`: seconds until the first answer, and until every variant is served.

Clones the repository into a fresh folder (no .venv, no model_repository), runs `make run`
there, and from the start of `make run` measures, with `tritonclient`:
- the first moment the gRPC port answers a health check (the server is up, maybe empty);
- the first successful `digits` inference (the goal: ≤ 180 s on a 2-core machine);
- the first successful `minilm` inference;
- the moment ListVariants lists at least the four promised variants of both models and
  none still building (the build has published every variant; those off the Pareto front
  stay unserved candidates, so the count served can be more than four, never less).
Then it stops `make run` with SIGTERM. The first run installs the virtual environment from
the package index, as a new user's does. Uses ports 8001 and 8002: nothing else may hold them.
`make run`'s output, each line after the seconds since it started, is kept beside the JSON
(`--out` with `.log` for `.json`): the clone is removed at the end. The health check's
channel retries every 0.5 s at most: with gRPC's default reconnect backoff (1 s, growing 1.6×
a try, ± 20 % jitter) a channel made at the start tries again near 27, 43, 70 and 113 s, and
every "up" figure measured before fits those tries (60–74 s, 112–113 s) rather than the
server's start.

`--cap-isa avx2` runs `make run` with torch, oneDNN and MKL held to AVX2 kernels
(`AVX2_ONLY_ENV`): on a CPU with AVX-512 BF16 it takes the path of a CPU without it (the
build trains in fp32, `repository.hardware.native_bf16`), the closest this can come to an
AVX2-only machine. ONNX Runtime has no such switch: its int8 kernels still use VNNI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np
import tritonclient.grpc as triton

from loadtest.messages import MINILM_INPUTS, triton_inputs
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.repository.hardware import cpu_description, fingerprint

ADDRESS = "127.0.0.1:8001"
POLL_S = 0.5
VARIANTS_PER_MODEL = 4  # fp32, int8, pruned, distilled: always served
RECONNECT_ARGS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 500)]
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _digits_ok(client: triton.InferenceServerClient) -> bool:
    tensor = triton.InferInput("images", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    return client.infer("digits", [tensor], client_timeout=10).as_numpy("logits") is not None


def _minilm_ok(client: triton.InferenceServerClient) -> bool:
    tensors = triton_inputs({name: np.ones((1, 8), np.int64) for name in MINILM_INPUTS})
    return client.infer("minilm", tensors, client_timeout=10).as_numpy("embedding") is not None


def _listing() -> tuple[dict[str, int], int]:
    """Variants served per model, and how many are still to be published."""
    import grpc

    with grpc.insecure_channel(ADDRESS) as channel:
        answer = slimserve_pb2_grpc.ManagementStub(channel).ListVariants(slimserve_pb2.ListVariantsRequest(), timeout=5)
    served: dict[str, int] = {}
    for variant in answer.variants:
        served[variant.model] = served.get(variant.model, 0) + 1
    return served, len(answer.building)


def _copy_with_times(source: IO[bytes], log_path: Path, started: float) -> None:
    """Each line of `make run`'s output into `log_path`, after the seconds since `started`."""
    with open(log_path, "w") as log:
        for raw in source:
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(f"{time.monotonic() - started:8.1f} {line}\n")
            log.flush()


def measure(clone: Path, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, object]:
    log_path = clone / "first_run.log"
    started = time.monotonic()
    make = subprocess.Popen(["make", "run"], cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)  # fmt: skip
    assert make.stdout is not None
    copier = threading.Thread(target=_copy_with_times, args=(make.stdout, log_path, started), daemon=True)
    copier.start()
    marks: dict[str, float] = {}
    # The channel is made before the server listens: without a short reconnect backoff, gRPC's
    # (1 s growing 1.6x a try) could report the server up tens of seconds after it was.
    client = triton.InferenceServerClient(ADDRESS, channel_args=RECONNECT_ARGS)
    try:
        while time.monotonic() - started < timeout_s and make.poll() is None:
            now = time.monotonic() - started
            try:
                if "server_up_s" not in marks and client.is_server_live(client_timeout=2):
                    marks["server_up_s"] = now
                if "server_up_s" in marks and "first_digits_answer_s" not in marks and _digits_ok(client):
                    marks["first_digits_answer_s"] = now
                if "server_up_s" in marks and "first_minilm_answer_s" not in marks and _minilm_ok(client):
                    marks["first_minilm_answer_s"] = now
                if "first_minilm_answer_s" in marks:
                    served, building = _listing()
                    promised = {model: count >= VARIANTS_PER_MODEL for model, count in served.items()}
                    if building == 0 and set(promised) == {"digits", "minilm"} and all(promised.values()):
                        marks["all_variants_s"] = now
                        marks["variants_served"] = sum(served.values())
                        break
            except Exception:  # not up yet, model not loaded yet: keep polling
                pass
            time.sleep(POLL_S)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)
            make.wait(timeout=120)
        copier.join(timeout=10)
    return {"cpu": cpu_description(), "isa": fingerprint(threads=1).isa, "cores": len(os.sched_getaffinity(0)), **marks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("."), help="the git repository to clone")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/first_run.json"))
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--cap-isa", choices=["avx2"], help="hold torch, oneDNN and MKL to AVX2 (module docstring)")
    parser.add_argument("--keep-repository", type=Path, metavar="DIR",
                        help="move the model repository the run built to DIR (which must not exist) before "
                             "the clone is removed: this machine's build, to serve or bench afterwards")  # fmt: skip
    args = parser.parse_args()
    if args.keep_repository is not None and args.keep_repository.exists():
        parser.error(f"--keep-repository {args.keep_repository} exists: name a new folder")
    with tempfile.TemporaryDirectory(prefix="slimserve-first-run-") as tmp:
        clone = Path(tmp) / "slimserve"
        subprocess.run(["git", "clone", "--quiet", str(args.source.resolve()), str(clone)], check=True)
        env = {**os.environ, **AVX2_ONLY_ENV} if args.cap_isa else None
        report = measure(clone, args.timeout_s, env)
        report["cap_isa"] = args.cap_isa
        report["log_tail"] = [
            line for line in (clone / "first_run.log").read_text(errors="replace").splitlines()
            if "published" in line or "loaded" in line or "serving" in line
        ][-12:]  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        log_copy = args.out.with_suffix(".log")
        shutil.copyfile(clone / "first_run.log", log_copy)
        report["log"] = log_copy.name  # beside the JSON, named relative to it: the clone is removed
        if args.keep_repository is not None and (clone / "model_repository").is_dir():
            shutil.move(clone / "model_repository", args.keep_repository)

    text = json.dumps(report, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    return 0 if "first_digits_answer_s" in report else 1


if __name__ == "__main__":
    sys.exit(main())
