"""Variant chains: a variant's name says how it is made from the reference, step by step.

`pruned-int8` is the pruned network quantized to int8; `distilled-pruned-int8` prunes the
distilled student, then quantizes it (Deep Compression's prune → quantize, after
distillation). Steps that change the network (distil, prune, factorise) come first and are
fine-tuned in torch; a step that rewrites the exported graph's weights (int8, int4) can only
come last, and so can quantization-aware training (`qat`): it fine-tunes the torch network
under simulated int8 and exports an int8 graph, so nothing can follow it either. Every step
runs on its parent's output, so each chain is checked and measured
against its parent as well as against fp32, and a parent a recipe does not serve is still
built (and not published) when a served chain needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from slimserve.repository.format import VariantKind

REFERENCE = "fp32"
# Steps on the torch network, fine-tuned afterwards. `distilled` starts from a new student,
# so it can only be a chain's first step.
NETWORK_STEPS: tuple[str, ...] = ("distilled", "pruned", "lowrank")
# Steps on the exported graph's weights; nothing can follow them.
GRAPH_STEPS: tuple[str, ...] = ("int8", "int4", "int8mixed")
# Steps that end in an int8 graph, on the graph or on the torch network (qat); nothing can follow them.
FINAL_STEPS: tuple[str, ...] = (*GRAPH_STEPS, "qat")
SEPARATOR = "-"


@dataclass(frozen=True)
class Chain:
    """The steps from fp32 to a variant, in order (fp32 itself has none)."""

    steps: tuple[str, ...]

    @property
    def name(self) -> str:
        return SEPARATOR.join(self.steps) or REFERENCE

    @property
    def last(self) -> str:
        """The step that makes this variant from its parent (its `kind`)."""
        return self.steps[-1] if self.steps else REFERENCE

    @property
    def kind(self) -> VariantKind:
        """The manifest's kind: what the last step made."""
        return cast(VariantKind, self.last)

    @property
    def parent(self) -> Chain:
        return Chain(self.steps[:-1])

    @property
    def on_graph(self) -> bool:
        """Whether the last step rewrites the parent's exported graph (no torch network)."""
        return self.last in GRAPH_STEPS


def parse_chain(name: str) -> Chain:
    """The chain a variant name spells; ValueError saying what is wrong otherwise."""
    if name == REFERENCE:
        return Chain(())
    steps = tuple(name.split(SEPARATOR))
    known = NETWORK_STEPS + FINAL_STEPS
    for step in steps:
        if step not in known:
            raise ValueError(f"variant {name!r}: unknown step {step!r} (steps: {', '.join(known)}, joined by '-')")
    if len(set(steps)) != len(steps):
        raise ValueError(f"variant {name!r}: a step appears twice")
    if "distilled" in steps[1:]:
        raise ValueError(f"variant {name!r}: 'distilled' trains a new student, so it must come first")
    if any(step in FINAL_STEPS for step in steps[:-1]):
        raise ValueError(
            f"variant {name!r}: {'/'.join(FINAL_STEPS)} make the final quantized graph, so they must come last"
        )
    return Chain(steps)


def build_plan(names: list[str]) -> list[Chain]:
    """Every chain needed to build `names`, each after its parent, in the order first asked for.

    Parents not in `names` are included (built, not served)."""
    plan: list[Chain] = [Chain(())]
    for name in names:
        chain = parse_chain(name)
        ancestry = [Chain(chain.steps[:length]) for length in range(1, len(chain.steps) + 1)]
        plan += [link for link in ancestry if link not in plan]
    return plan
