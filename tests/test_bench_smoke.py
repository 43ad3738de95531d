"""`python -m bench.e2e` runs end to end and measures both refundq and its baseline.

Not a timed assertion: only that the benchmark ran and produced positive figures. It runs as a
child process so it picks its own Redis database and settings, as it does from the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_BASE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_bench_e2e_measures_refundq_and_baseline(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUNDQ_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.e2e",
            "--refunds",
            "20",
            "--runs",
            "1",
            "--redis-url",
            REDIS_BASE,
            "--timeout",
            "60",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (refundq,) = report["runs"]["refundq"]
    (base,) = report["runs"]["baseline"]
    assert refundq["refunds"] == 20 and refundq["statuses"] == {"completed": 20}
    assert refundq["refunds_per_second"] > 0 and refundq["final_per_second"] > 0
    assert base["tasks"] == 20 and base["tasks_per_second"] > 0
    assert report["median"]["ratio"] > 0
    assert "baseline" in proc.stdout and "ratio" in proc.stdout
