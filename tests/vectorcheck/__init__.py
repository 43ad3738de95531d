"""Per-provider rules for the signing vectors (shared/providers/vectors/README.md §4-§7).

Each module here exposes KINDS: kind -> KindRule. test_vectors.py picks the rule by the file
name (provider) and the vector's kind, checks the keys, then runs the rule's check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class KindRule:
    inputs: frozenset[str]  # keys that must be present
    expected: frozenset[str]
    check: Check
    optional_inputs: frozenset[str] = field(default_factory=frozenset)
    optional_expected: frozenset[str] = field(default_factory=frozenset)


def rule(
    check: Check,
    *,
    inputs: set[str],
    expected: set[str],
    optional_inputs: set[str] | None = None,
    optional_expected: set[str] | None = None,
) -> KindRule:
    return KindRule(
        frozenset(inputs),
        frozenset(expected),
        check,
        frozenset(optional_inputs or ()),
        frozenset(optional_expected or ()),
    )
