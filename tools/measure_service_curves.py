"""Measure an encoder's service curves for the simulator (docs/bench/router_sim_service.json).

Every served variant of one model, side by side (`repository.profile.profile_sessions`: calls
interleaved, so a noisy machine slows them all alike), one ONNX Runtime thread per session (the
edge profile), at each input length and batch size. Pin it to one core, as the bench pins the
server:

    taskset -c 1 python tools/measure_service_curves.py --model REPOSITORY/minilm \
        --out docs/bench/router_sim_service.json

The file keeps the layout `slimserve.simulate.calibration.read_service_curves` reads:
{"note", "cpu", "tokens": {tokens: {variant: {batch: p50 ms}}}}, and with more than one round
(`--rounds`, 5 by default) "spread": {tokens: {variant: {batch: (max − min) / median of the
rounds' p50s}}}. A round is the whole sweep; the file keeps the median over rounds of each
round's p50. One round is not enough on a shared machine: over five rounds on an AVX2-only
EPYC one variant's p50 at one batch size moved by a median 16 % (7-34 %) between rounds at
128 tokens, and a one-round file had put pruned-int8's batch-1 point 13 % above the five
rounds' median. With the median curves (and the calibration refitted on them) the simulated
router stands 2-3 points better against the best static variant at 1.5-2× fp32's capacity
(docs/routing.md, ninth part).

`--add-to FILE --reference VARIANT` adds variants to an existing file without moving the
simulator's calibration (fitted against that file's curves, on another day's machine): the
new variants are timed side by side with the reference, and written as the reference's curve
in FILE times the ratio measured now, per input length and batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

from slimserve.repository.format import load_model
from slimserve.repository.hardware import cpu_description
from slimserve.repository.profile import profile_sessions, synthetic_batch
from slimserve.repository.sessions import make_session

# The bench's inputs (the simulator's physics) and the server's start-up profile (its belief).
DEFAULT_LENGTHS = {128: [1, 2, 4, 8, 16], 32: [1, 8, 32]}
SECONDS_PER_BATCH_SIZE = 6.0
ROUNDS = 5  # whole sweeps (module docstring): 18 minutes for minilm's seven variants on an AVX2 EPYC core


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder of a built repository")
    parser.add_argument("--variants", nargs="+", help="default: every variant the model serves")
    parser.add_argument("--seconds", type=float, default=SECONDS_PER_BATCH_SIZE, help="per batch size")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="whole sweeps; the median of their p50s is kept")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--add-to", type=Path, help="an existing curve file to add the measured variants to")
    parser.add_argument("--reference", help="with --add-to: a variant in that file, timed beside the new ones")
    args = parser.parse_args()
    if (args.add_to is None) != (args.reference is None):
        parser.error("--add-to and --reference go together")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    model = load_model(args.model)
    names = args.variants or list(model.variants)
    graphs = {name: entry.onnx_path.read_bytes() for name, entry in model.candidates.items() if name in names}
    missing = sorted(set(names) - set(graphs))
    if missing:
        print(f"{args.model}: no variant(s) {missing}", file=sys.stderr)
        return 2
    if args.reference and args.reference not in graphs:
        graphs[args.reference] = model.candidates[args.reference].onnx_path.read_bytes()
    sessions = {name: make_session(graph, 1) for name, graph in graphs.items()}
    tokens: dict[str, dict[str, dict[str, float]]] = {}
    spread: dict[str, dict[str, dict[str, float]]] = {}
    for length, batches in DEFAULT_LENGTHS.items():

        def batch_of(rows: int, length: int = length) -> dict[str, np.ndarray]:
            return synthetic_batch(model.config.inputs, rows, length)

        rounds = []
        for round_index in range(args.rounds):
            latencies = profile_sessions(sessions, batch_of, batches, args.seconds)
            rounds.append({name: {b: s.p50_ms for b, s in per_batch.items()} for name, per_batch in latencies.items()})
            if args.rounds > 1:
                print(f"{length} tokens: round {round_index + 1}/{args.rounds}", flush=True)
        tokens[str(length)], spread[str(length)] = {}, {}
        for name in sessions:
            p50s = {b: np.array([r[name][b] for r in rounds]) for b in batches}
            tokens[str(length)][name] = {str(b): round(float(np.median(ms)), 3) for b, ms in p50s.items()}
            spread[str(length)][name] = {
                str(b): round(float((ms.max() - ms.min()) / np.median(ms)), 3) for b, ms in p50s.items()
            }
        print(f"{length} tokens: " + ", ".join(f"{n} {t['1']:.2f} ms" for n, t in tokens[str(length)].items()))
    if args.add_to is not None:
        return add_to(args.add_to, args.reference, tokens, args.out)
    note = (
        f"{args.model.name} service time (p50 ms) per batch size of one ONNX Runtime session with 1 thread "
        f"(the edge profile), by input length in tokens; measured side by side by "
        f"tools/measure_service_curves.py ({date.today().isoformat()}), pinned to one core; the median of "
        f"{args.rounds} round(s) of the whole sweep. "
        "128: the bench's inputs (physics); 32: the length the server profiles at start (the router's "
        "starting belief)."
    )
    data: dict[str, object] = {"note": note, "cpu": cpu_description(), "tokens": tokens}
    if args.rounds > 1:
        data["spread"] = spread
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


def add_to(path: Path, reference: str, measured: dict[str, dict[str, dict[str, float]]], out: Path) -> int:
    """`path`'s curves plus every measured variant but `reference`, scaled by reference's curve there."""
    data = json.loads(path.read_text())
    for length, per_variant in measured.items():
        stored = data["tokens"][length][reference]
        for name, curve in per_variant.items():
            if name != reference:
                now = per_variant[reference]
                data["tokens"][length][name] = {b: round(ms * stored[b] / now[b], 3) for b, ms in curve.items()}
    added = sorted(set(next(iter(measured.values()))) - {reference})
    data["note"] += (
        f" Added {date.today().isoformat()} by tools/measure_service_curves.py --add-to: {', '.join(added)}, timed "
        f"side by side with {reference} on {cpu_description()} and written as {reference}'s curve here times the ratio "
        "measured, so that the calibration fitted against this file still holds."
    )
    out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
