"""Read a real /metrics endpoint with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(url: str) -> dict[str, list[Sample]]:
    """Samples by metric family name."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: dict[str, list[Sample]], family: str, name: str | None = None, **labels: str) -> float:
    """Sum of the samples of `family` (sample `name`, default the family's) matching `labels`."""
    wanted = name or family
    return sum(
        s.value
        for s in samples.get(family, [])
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
    )
