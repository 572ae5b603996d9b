"""The benchmark (bench/) still runs end to end: its quickest mode, once, with no lost keys.

It never asserts on a speed figure: a loaded CI machine must not fail it. It only keeps the harness
working: the stand-ins start, both services serve the load, every reported key is in its bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
# The quick run takes ~30 s, plus ~10-60 s the first time it builds the seed's venv from PyPI.
TIMEOUT_SECONDS = 300


def test_bench_quick_run_completes_with_no_lost_keys(tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("the benchmark reads /proc")
    out = tmp_path / "bench.json"
    # The measured services must not inherit the test run's AIG_* or AWS settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIG_", "AWS_"))}
    command = [sys.executable, "-m", "bench.run", "--quick", "--seed-optional", "--out", str(out),
               "--logs-dir", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert run.returncode == 0, f"bench failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    results = json.loads(out.read_text())
    assert "ours" in results["services"], results.get("seed_skipped")
    for name, service in results["services"].items():
        for phase in ("sequential", "closed_loop"):
            assert service[phase]["ok"] > 0, (name, phase, service[phase])
        assert service["keys"]["unique"] > 0, name
        assert service["keys"]["lost"] == 0, (name, service["keys"])
        assert service["keys"]["check_errors"] == 0, (name, service["keys"])
    ours = results["services"]["ours"]
    assert ours["burst"]["ok"] > 0, ours["burst"]
    # Screening is on for ours: every image went through the (stand-in) Rekognition.
    loop = ours["closed_loop"]
    assert loop["standin"]["rekognition_calls"] >= loop["images"], loop["standin"]
    assert "| figure" in run.stdout  # the table was printed
