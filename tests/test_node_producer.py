"""Issue #17: door (b) from Node. The README's 'Enqueue from Node' example, tests/node/enqueue.mjs,
run as written (celery-node 0.5.9 from tests/node/package-lock.json) against a real worker and
dispatcher on Redis, under Celery protocol 2 and 1: one valid refund per provider is persisted and
completed, an invalid one is recorded as a rejected intake and shown by `refundq refund show`, a
request sent twice is one row, and a `sendTask` without kwargs is never dropped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import TEST_REDIS_URL, make_runtime
from tests.test_pipeline import FINAL, clean
from tests.test_providers_e2e import PROVIDERS, refund_request
from worker import store

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
EXAMPLE = NODE_DIR / "enqueue.mjs"
README = ROOT / "README.md"


def test_readme_shows_the_example_file_as_it_is() -> None:
    """The README's Node example is tests/node/enqueue.mjs, byte for byte, so the two cannot drift."""
    readme = README.read_text()
    match = re.search(r"### Enqueue from Node\n.*?`tests/node/enqueue\.mjs`.*?\n```js\n(.*?)```\n", readme, re.S)
    assert match, "README: no ```js block after 'tests/node/enqueue.mjs' in '### Enqueue from Node'"
    assert match[1] == EXAMPLE.read_text(), "README's Node example differs from tests/node/enqueue.mjs: copy it over"


def node_example() -> list[str]:
    """`node tests/node/enqueue.mjs`, after `npm ci` when celery-node is missing or not the locked one."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are not on PATH (the Node producer test runs the README's example with them)")
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/celery-node"]["version"]
    installed = NODE_DIR / "node_modules" / "celery-node" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        started = time.monotonic()
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
        sys.stderr.write(f"npm ci in tests/node: {time.monotonic() - started:.1f} s\n")
    return [node, str(EXAMPLE)]


def refundq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    refundq = Path(sys.executable).parent / "refundq"
    return subprocess.run(
        [str(refundq), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def worker_complaints(log_dir: Path) -> str:
    lines = []
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        lines += [line for line in text.splitlines() if "InvalidTaskError" in line or "invalid task" in line.lower()]
    return "\n".join(lines[-5:])


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [2, 1])
def test_readme_node_example_against_a_real_worker(
    protocol: int, stack_factory: Any, sandbox: Any, pg_url: str, tmp_path: Path
) -> None:
    command = node_example()
    clean(pg_url)
    stack = stack_factory(pg_url)
    stack.start_worker()
    stack.start_dispatcher()
    run = f"node-v{protocol}-{time.time_ns()}"
    valid = [refund_request(provider, i, 0, run) for i, provider in enumerate(PROVIDERS)]
    invalid = {**refund_request("cobo", 10, 0, run), "amount": "-1.00"}
    twice = refund_request("coincorner", 11, 0, run)
    no_kwargs = refund_request("cryptomus", 12, 0, run)
    sent = [*valid, invalid, twice, twice]

    node = subprocess.run(
        command,
        env={
            **os.environ,
            "REFUNDQ_REDIS_URL": TEST_REDIS_URL,
            "CELERY_TASK_PROTOCOL": str(protocol),
            "REFUNDQ_REQUESTS": json.dumps(sent),
            "REFUNDQ_REQUESTS_NO_KWARGS": json.dumps([no_kwargs]),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 0, f"node exited {node.returncode}:\n{node.stdout}\n{node.stderr}"
    assert len([line for line in node.stdout.splitlines() if line.startswith("sent ")]) == len(sent) + 1, node.stdout

    # Bounded: at most 60 s (about 120 rounds), and 10 s for the message without kwargs once the
    # others, sent before it, have all landed.
    rt = make_runtime(pg_url, sandbox.accounts_file)
    persisted = [*valid, twice]
    deadline = time.monotonic() + 60
    while True:
        stack.assert_alive()
        with rt.engine.connect() as conn:
            refunds = {r["idempotency_key"]: store.get_by_key(conn, r["idempotency_key"]) for r in persisted}
            rejected = store.rejected_intakes(conn, invalid["idempotency_key"])
            short = store.get_by_key(conn, no_kwargs["idempotency_key"])
            short_rejected = store.rejected_intakes(conn, no_kwargs["idempotency_key"])
        if all(r is not None and r.status in FINAL for r in refunds.values()) and rejected:
            deadline = min(deadline, time.monotonic() + 10)
            if short is not None or short_rejected:
                break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)

    # The four providers, and the request sent twice: persisted, submitted, completed.
    assert {k: r.status if r else None for k, r in refunds.items()} == {
        r["idempotency_key"]: "completed" for r in persisted
    }
    with rt.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM refund WHERE idempotency_key = :k"), {"k": twice["idempotency_key"]}
        ).scalar_one()
        assert store.rejected_intakes(conn, twice["idempotency_key"]) == []
    assert rows == 1
    ledger = sandbox.ledger()["refunds"]
    assert all(e["created"] == 1 for e in ledger), ledger

    # The invalid one: a rejected intake with its reason, and `refund show` says so.
    assert len(rejected) == 1 and "amount: must be greater than zero" in rejected[0]["reasons"], rejected
    shown = refundq_cli(stack.env, "refund", "show", invalid["idempotency_key"])
    assert shown.returncode == 0, shown.stderr
    assert "rejected at intake" in shown.stdout and "amount: must be greater than zero" in shown.stdout, shown.stdout
    shown = refundq_cli(stack.env, "refund", "show", valid[0]["idempotency_key"])
    assert shown.returncode == 0 and "completed" in shown.stdout, shown.stdout + shown.stderr

    # sendTask without kwargs (protocol 2 body [[request], null, {}]; protocol 1 omits kwargs):
    # a refund or a rejected intake, never dropped.
    assert short is not None or short_rejected, (
        f"protocol {protocol}: sendTask without kwargs was dropped, no refund and no rejected intake for "
        f"{no_kwargs['idempotency_key']!r}; worker log: {worker_complaints(tmp_path) or '(nothing)'}"
    )
