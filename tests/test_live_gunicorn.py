"""The real gunicorn with the repo's config: the original curl line, and schemathesis against the live app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.servers import free_port, start_gunicorn, stop

pytestmark = pytest.mark.live

CURL_LINE = ['curl', '-s', '-X', 'POST', '--data',
             '{"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}']


@pytest.fixture
def live(tmp_path):
    """gunicorn serving the offline app on a free loopback port; yields (base url, data folder)."""
    port, data = free_port(), tmp_path / "images"
    proc = start_gunicorn({"AIG_DATA_DIR": str(data), "AIG_JOB_DB": str(tmp_path / "jobs.sqlite3"), "AIG_WORKERS": "2",
                           "AIG_THREADS": "8"}, port,
                          tmp_path / "gunicorn.log")
    yield f"http://127.0.0.1:{port}", data
    stop(proc)


def test_gunicorn_answers_the_original_curl_line_with_four_pngs(live):
    base, data = live
    if not shutil.which("curl"):
        pytest.fail("curl is needed: the README's own command is what this test sends")
    out = subprocess.run([*CURL_LINE, f"{base}/generate_images"], capture_output=True, text=True, check=True)
    import json
    manifest = json.loads(out.stdout)
    assert len(manifest["images"]) == 4 and manifest["placeholder"] is True
    for key in manifest["images"]:
        assert key.startswith("000/111/porsche_image-")
        with Image.open(Path(data) / key) as image:
            assert (image.format, image.size) == ("PNG", (1024, 1024))


def test_schemathesis_finds_no_5xx_and_no_schema_breach_in_the_live_app(live, tmp_path):
    base, _ = live
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
         "run", f"{base}/openapi.json", "--checks", "all", "--max-examples", "25",
         "--seed", "7", "--no-color", "--suppress-health-check", "all", "--report-dir", str(tmp_path / "st")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
