"""What a simulation replays and how its calls are assigned: arrivals and policies.

`Routed` lets the real router decide; `Pinned` names one variant for every call, and `Mix`
names one drawn per call from fixed probabilities — both as a caller that sets
`model_version` does, so the server's checks on named calls still apply (`engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arrival:
    """One call: when it is sent (s), its SLO, its input length (tokens; 0: none), its rows."""

    at_s: float
    slo_ms: float
    tokens: int = 0
    rows: int = 1
    measured: bool = True  # False: warm-up traffic, not counted


class Policy:
    """How calls are assigned: `None` routes (the real router decides), a name pins."""

    def variant(self, index: int) -> str | None:
        return None


@dataclass(frozen=True)
class Routed(Policy):
    """The router decides (its RouterConfig is the simulation's)."""


@dataclass(frozen=True)
class Pinned(Policy):
    """Every call names one variant."""

    name: str

    def variant(self, index: int) -> str | None:
        return self.name


class Mix(Policy):
    """Each call names a variant drawn with these probabilities; `draws[i]` is measured call
    i's uniform number (the same numbers for every mix: mixes compare on common random numbers)."""

    def __init__(self, weights: dict[str, float], draws: np.ndarray) -> None:
        self.weights = {name: w for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("a mix needs a variant with a positive weight")
        names = list(self.weights)
        bounds = np.cumsum(list(self.weights.values()))
        bounds /= bounds[-1]
        bounds[-1] = 1.0 + 1e-12
        self._chosen = [names[i] for i in np.searchsorted(bounds, draws, side="right")]

    def variant(self, index: int) -> str | None:
        return self._chosen[index]

    def __repr__(self) -> str:
        return "Mix(" + ", ".join(f"{n}={w:.2f}" for n, w in self.weights.items()) + ")"
