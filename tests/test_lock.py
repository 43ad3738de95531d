"""requirements.lock (made by bin/lock, installed by bin/setup, CI and the Dockerfile) agrees with
pyproject.toml: every dependency, runtime and dev, is pinned there to a version its range allows,
and every pinned package carries the hashes that `pip install --require-hashes` checks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
BACKSLASH = "\\"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# bin/lock targets CPython 3.11 on Linux, whatever runs this test.
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def lock_entries(text: str) -> list[str]:
    """The lock's requirement entries, each with its backslash continuations joined; comments dropped."""
    entries: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        current = f"{current} {line.removesuffix(BACKSLASH).strip()}".strip()
        if not line.endswith(BACKSLASH):
            if current:
                entries.append(current)
            current = ""
    if current:
        entries.append(current)
    return entries


def parse_lock(text: str) -> tuple[dict[str, Version], list[str]]:
    """(name -> locked version, problems): an entry that is not `name==version`, or has no hash."""
    pins: dict[str, Version] = {}
    problems: list[str] = []
    for entry in lock_entries(text):
        if entry.startswith("-"):
            problems.append(f"option line in the lock: {entry[:80]!r}")
            continue
        match = PIN.match(entry)
        if not match:
            problems.append(f"not pinned with ==: {entry[:80]!r}")
            continue
        name = canonicalize_name(match["name"])
        if not HASH.search(entry):
            problems.append(f"{name}: no --hash")
        if name in pins:
            problems.append(f"{name}: pinned twice")
        pins[name] = Version(match["version"])
    return pins, problems


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    specs = list(project["dependencies"]) + [s for group in extras for s in group]
    return [Requirement(s) for s in specs]


def disagreements(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    out: list[str] = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req}: not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req}: requirements.lock has {pins[name]}")
    return out


def test_lock_pins_every_dependency_within_its_range() -> None:
    pins, _ = parse_lock(LOCK.read_text())
    problems = disagreements(declared(), pins)
    assert not problems, "pyproject.toml and requirements.lock disagree (run bin/lock):\n" + "\n".join(problems)


def test_every_lock_entry_is_pinned_with_hashes() -> None:
    pins, problems = parse_lock(LOCK.read_text())
    assert pins, "requirements.lock pins nothing"
    assert not problems, "requirements.lock (run bin/lock):\n" + "\n".join(problems)


def test_every_dependency_has_an_upper_bound() -> None:
    """The policy in pyproject.toml: no range is open above."""
    unbounded = [
        str(r) for r in declared() if not any(s.operator in {"<", "<=", "==", "~=", "==="} for s in r.specifier)
    ]
    assert not unbounded, unbounded


def test_the_checks_catch_drift() -> None:
    """The parser and the comparison above do fail on a stale or hashless lock."""
    lock = (
        "# comment\n"
        "redis==7.4.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via refundq\n"
        "httpx==0.28.1\n"
        "kombu==5.7.0 \\\n    --hash=sha256:" + "b" * 64 + " \\\n    --hash=sha256:" + "c" * 64 + "\n"
    )
    pins, problems = parse_lock(lock)
    assert pins == {"redis": Version("7.4.0"), "httpx": Version("0.28.1"), "kombu": Version("5.7.0")}
    assert problems == ["httpx: no --hash"]
    reqs = [Requirement("redis>=8.1.0,<9"), Requirement("celery[redis]~=5.7.0"), Requirement("kombu~=5.7.0")]
    assert disagreements(reqs, pins) == [
        "redis<9,>=8.1.0: requirements.lock has 7.4.0",
        "celery[redis]~=5.7.0: not in requirements.lock",
    ]
