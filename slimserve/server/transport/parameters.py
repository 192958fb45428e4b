"""Reading Open Inference Protocol parameters, from whichever generated module made them.

Only `WhichOneof` and attribute access are used, so the same functions read our messages
and tritonclient's (wire-identical; the two cannot be imported into one process).
"""

from __future__ import annotations

from typing import Any


def parameter_value(parameter: Any) -> bool | int | float | str:
    """The value an InferParameter holds ('' if none is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else ""
