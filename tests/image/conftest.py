"""The image tests run only under `make test-image`, which builds the image first: `make test`
skips them (they need a Docker engine and take minutes), saying how to run them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "image" in (config.getoption("markexpr") or "")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.image)
            if not asked:
                item.add_marker(pytest.mark.skip(reason="builds and runs the container image: `make test-image`"))
