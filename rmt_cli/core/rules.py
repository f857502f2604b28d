"""The memory update rules by name, and what each has (no torch here: recipes are validated without it).

- `replace`: the written memory is the next one (the original RMT).
- `gated`: a learned gate per memory slot mixes the written memory into the old one (`memory.MemorySlots`).
- `associative` (ARMT): `replace`, plus a matrix per decoder layer written by the memory tokens (`associative.py`).
- `gated-associative`: `gated`, plus the matrices of `associative`.
- `routed`: `gated`, with the slots competing: one softmax over the slots and a "keep everything" option decides
  how much of each written slot enters the memory, so a segment writes about one slot's worth in all.

Code asks what a rule has (`has_gates`, `has_matrices`), never which rule it is, so a rule made of parts that
already exist needs no code of its own.
"""

from __future__ import annotations

# A gate below this keeps the old memory bit for bit (the recipes' default, and a hand-built cell's: a cell saved
# with settings of another floor loaded as another model)
GATE_FLOOR = 0.001

UPDATE_RULES = ("replace", "gated", "associative", "gated-associative", "routed")
GATED_RULES = frozenset({"gated", "gated-associative", "routed"})  # a gate per memory slot, a floor, gate supervision
ROUTED_RULES = frozenset({"routed"})  # the gates are one softmax over the slots and "keep"
ASSOCIATIVE_RULES = frozenset({"associative", "gated-associative"})  # per-layer associative matrices

# The changes of a trained model's rule that keep what it computes, so that `rmt extend` may make them: the new
# rule is the old one plus associative matrices, whose reads start at scale 0 (a fresh matrix adds exactly 0), so
# the upgraded model computes what the old one did, bit for bit, until training moves the scale.
UPGRADES = {"gated": "gated-associative"}


def has_gates(update: str) -> bool:
    """The rule gates each memory slot (and so has a gate floor and gate supervision)."""
    return update in GATED_RULES


def is_routed(update: str) -> bool:
    """The rule's slots compete for one segment's write (a softmax over slots and "keep"), rather than each slot
    having a gate of its own."""
    return update in ROUTED_RULES


def has_matrices(update: str) -> bool:
    """The rule keeps associative matrices besides the memory vectors (and needs memory tokens to write them)."""
    return update in ASSOCIATIVE_RULES


def is_upgrade(old: str, new: str) -> bool:
    """`new` is `old` plus fresh associative matrices: a trained `old` model may continue as `new`."""
    return UPGRADES.get(old) == new


def upgrades_text() -> str:
    """The allowed upgrades, for error messages: "gated -> gated-associative"."""
    return ", ".join(f"{old} -> {new}" for old, new in UPGRADES.items())
