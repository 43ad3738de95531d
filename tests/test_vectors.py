"""Runs every signing vector of every file in REFUNDQ_VECTORS_DIR (default tests/vectors/).

Rules (shared vectors/README.md §2): an unknown provider, kind or key fails; an empty folder
fails; each vector is its own test case.
"""

from __future__ import annotations

import json
import os
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from tests.vectorcheck import KindRule

VECTORS_DIR = Path(os.environ.get("REFUNDQ_VECTORS_DIR", Path(__file__).parent / "vectors"))
VECTOR_MEMBERS = {"name", "kind", "inputs", "expected", "source"}


def _load() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in sorted(VECTORS_DIR.glob("*.json")):
        vectors = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(vectors, list), f"{path}: must be a JSON array"
        cases += [(path.stem, v) for v in vectors]
    return cases


CASES = _load()


def test_vectors_folder_is_not_empty() -> None:
    assert CASES, f"no vector found in {VECTORS_DIR}"


def _rules(provider: str) -> dict[str, KindRule]:
    try:
        module = import_module(f"tests.vectorcheck.{provider}")
    except ModuleNotFoundError:
        pytest.fail(f"unknown provider {provider!r} (no tests/vectorcheck/{provider}.py)")
    rules: dict[str, KindRule] = module.KINDS
    return rules


def check_keys(where: str, given: set[str], required: frozenset[str], optional: frozenset[str]) -> None:
    missing = required - given
    unknown = given - required - optional
    assert not missing, f"{where}: missing keys {sorted(missing)}"
    assert not unknown, f"{where}: unknown keys {sorted(unknown)} (a new rule is needed)"


@pytest.mark.parametrize(
    ("provider", "vector"), CASES, ids=[f"{p}:{v.get('name', i)}" for i, (p, v) in enumerate(CASES)]
)
def test_vector(provider: str, vector: dict[str, Any]) -> None:
    assert set(vector) == VECTOR_MEMBERS, f"vector members must be exactly {sorted(VECTOR_MEMBERS)}"
    rules = _rules(provider)
    kind = vector["kind"]
    if kind not in rules:
        pytest.fail(f"{provider}: unknown kind {kind!r}")
    rule = rules[kind]
    check_keys("inputs", set(vector["inputs"]), rule.inputs, rule.optional_inputs)
    check_keys("expected", set(vector["expected"]), rule.expected, rule.optional_expected)
    rule.check(vector["inputs"], vector["expected"])
