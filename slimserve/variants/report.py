"""The variant table a person reads after a build, and its JSON twin.

Both also say which variants the build tried and left out, with why (model.yaml's
`skipped_variants`: a generic ONNX graph with nothing to quantize, or a variant slower and not
smaller on the build machine), so that an absent int8 is never a silent mystery: the table ends
with a `skipped:` line, and the JSON has a row for each with `built` false and `skipped` the
reason (every measurement None). Built rows have `built` true and `skipped` None, so every row
has the same keys and a reader keeps `[r for r in rows if r["built"]]` for the measured ones.
"""

from __future__ import annotations

import json
from typing import Any

from slimserve.repository.format import ModelEntry, Profile
from slimserve.variants.pareto import front, tradeoffs


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _human_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count / 1e3:.1f}k"


def pick_profile(profiles: dict[str, Profile], hardware_key: str | None) -> Profile | None:
    """This machine's profile if there is one, else the first stored."""
    if hardware_key and hardware_key in profiles:
        return profiles[hardware_key]
    return next(iter(profiles.values()), None)


def table_rows(entry: ModelEntry, hardware_key: str | None = None) -> list[dict[str, Any]]:
    """Every built variant (served or not) on this machine's profile, its Pareto standing marked;
    then every skipped variant with its reason (module docstring)."""
    rows = []
    manifests = {name: variant.manifest for name, variant in entry.candidates.items()}
    shown = pick_profile(manifests[entry.config.reference_variant].profiles, hardware_key)
    on_front = front(tradeoffs(manifests, entry.config.quality_metric.name, shown.hardware.key)) if shown else set()
    for name, variant in entry.candidates.items():
        m = variant.manifest.measurements
        seed = variant.manifest.seed_formulas
        profile = pick_profile(variant.manifest.profiles, hardware_key)
        batch1 = profile.latency.get(1) if profile else None
        rows.append(
            {
                "variant": name,
                "kind": variant.manifest.kind,
                "source": variant.manifest.source,
                "served": name in entry.variants,
                "pareto_front": name in on_front,
                "params": m.params,
                "macs": m.macs,
                "size_bytes": m.size_bytes,
                "coded_bytes": m.coded_bytes,
                "alpha_coded": (manifests[entry.config.reference_variant].measurements.size_bytes / m.coded_bytes)
                if m.coded_bytes
                else None,
                "session_rss_bytes": m.session_rss_bytes,
                "alpha_params": seed.alpha_params,
                "alpha_bytes": seed.alpha_bytes,
                "beta_params": seed.beta_params,
                "beta_bytes": seed.beta_bytes,
                "speedup_batch1": profile.speedup.get(1) if profile else None,
                "p50_ms_batch1": batch1.p50_ms if batch1 else None,
                "p95_ms_batch1": batch1.p95_ms if batch1 else None,
                "profile": profile.label if profile else None,
                "quality": m.quality,
                "agreement": m.agreement,
                "architecture": variant.manifest.architecture,
                "built": True,
                "skipped": None,
            }
        )
    keys = list(rows[0]) if rows else []
    for name, reason in skipped(entry).items():
        blank: dict[str, Any] = dict.fromkeys(keys)
        rows.append({**blank, "variant": name, "served": False, "pareto_front": False, "built": False,
                     "skipped": reason})  # fmt: skip
    return rows


def skipped(entry: ModelEntry) -> dict[str, str]:
    """The variants the build left out, each with why (none for a model built before it said)."""
    return dict(entry.config.skipped_variants or {})


def _fmt_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def render_table(entry: ModelEntry, hardware_key: str | None = None) -> str:
    """A fixed-width table: one line per variant."""
    header = ["variant", "served", "params", "MACs", "size", "coded", "memory", "α p/b/coded", "β p/b", "δ@1",
              "p50@1 ms", "quality", "agreement"]  # fmt: skip
    lines = []
    for row in table_rows(entry, hardware_key):
        if not row["built"]:
            continue  # on the `skipped:` line below
        lines.append(
            [
                row["variant"] + (" ★" if row["pareto_front"] else ""),
                "yes" if row["served"] else "no",
                _human_count(row["params"]),
                _human_count(row["macs"]) if row["macs"] is not None else "-",
                _human_bytes(row["size_bytes"]),
                _human_bytes(row["coded_bytes"]) if row["coded_bytes"] else "-",
                _human_bytes(row["session_rss_bytes"]) if row["session_rss_bytes"] is not None else "-",
                f"{row['alpha_params']:.2f}/{row['alpha_bytes']:.2f}/"
                + (f"{row['alpha_coded']:.2f}" if row["alpha_coded"] else "-"),
                f"{row['beta_params']:.2f}/{row['beta_bytes']:.2f}",
                f"{row['speedup_batch1']:.2f}x" if row["speedup_batch1"] else "-",
                f"{row['p50_ms_batch1']:.3f}" if row["p50_ms_batch1"] is not None else "-",
                _fmt_scores(row["quality"]),
                _fmt_scores(row["agreement"]),
            ]
        )
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    config = entry.config
    title = (
        f"{config.name} ({config.task}; quality = {config.quality_metric.name}; reference = {config.reference_variant})"
    )
    title += "\n★ Pareto front (quality, p95 at batch 1, size) on the profile shown; memory = session RSS at max batch"
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    by_reason: dict[str, list[str]] = {}  # one reason often covers several (no calibration rows)
    for name, reason in skipped(entry).items():
        by_reason.setdefault(reason, []).append(name)
    if by_reason:
        out.append("skipped: " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items()))
    return "\n".join(out)


def render_json(models: dict[str, ModelEntry], hardware_key: str | None = None) -> str:
    return json.dumps({name: table_rows(entry, hardware_key) for name, entry in models.items()}, indent=2)
