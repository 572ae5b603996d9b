"""The benchmarks (bench/) still run end to end: each one's quickest mode, once, with no lost keys.

They never assert on a speed figure: a loaded CI machine must not fail them. They only keep the
harnesses working: the stand-ins start, the services serve the load, every reported key is in its
bucket; for bench.scale, nginx spreads the load over several instances and every queued job succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import require_tool

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
# The quick run takes ~30 s, plus ~10-60 s the first time it builds the seed's venv from PyPI.
TIMEOUT_SECONDS = 300
# bench.scale --quick takes ~20 s: 3 instances, nginx, 30 requests at 1 s, 3 workers draining 50 jobs.
SCALE_TIMEOUT_SECONDS = 180


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


def test_bench_scale_quick_run_serves_every_request_and_job_with_nothing_lost(tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("the benchmark reads /proc")
    require_tool("nginx")
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIG_", "AWS_"))}
    command = [sys.executable, "-m", "bench.scale", "--quick", "--out", str(out), "--logs-dir", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SCALE_TIMEOUT_SECONDS)
    assert run.returncode == 0, f"bench.scale failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    results = json.loads(out.read_text())
    sync, jobs = results["phases"]["sync"], results["phases"]["jobs"]
    assert sync["statuses"] == {"200": results["config"]["burst"]}, sync["statuses"]
    assert sync["keys"]["lost"] == 0 and sync["keys"]["unique"] == results["config"]["burst"], sync["keys"]
    # nginx spread the burst: more than one instance held requests at the same time.
    assert sync["spread"]["instances_busy_at_once"] >= 2, sync["spread"]
    assert jobs["states"] == {"succeeded": results["config"]["jobs"]}, jobs["states"]
    assert jobs["lost"] == 0 and jobs["keys"]["lost"] == 0, (jobs["lost"], jobs["keys"])
    # Each job called the model once: nothing was paid for twice.
    assert jobs["standin"]["invoke_calls"] == results["config"]["jobs"], jobs["standin"]
    assert all(results["checks"].values()), results["checks"]
    assert "| figure" in run.stdout  # the table was printed
