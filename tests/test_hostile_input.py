"""Property tests over hostile bodies, folders and prefixes: never a 5xx, never a write outside the store."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_image_generator import create_app
from settings import Settings

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
FIELDS = ["prompt", "output_folder", "file_name_prefix", "count", "negative_prompt", "width", "height",
          "quality", "cfg_scale", "seed"]
# Mostly plausible values with hostile ones mixed in: traversal, absolute paths, control and odd characters.
PATHLIKE = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["..", ".", "", "a", "b-1", "/", "\\", "\x00", "%2e", "~", "c.d", "\u202e", "e_f"]),
             min_size=1, max_size=8).map("/".join),
    st.from_regex(r"[A-Za-z0-9._/-]{1,40}", fullmatch=True),
)
HOSTILE_SETTINGS = settings(max_examples=150, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory):
    """One offline app for every example: a fresh app per example would only slow hypothesis down."""
    root = tmp_path_factory.mktemp("store")
    data = root / "images"
    app = create_app(Settings.from_env({}, data_dir=str(data)))
    return app, data, root


def snapshot(root) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


@HOSTILE_SETTINGS
@given(body=st.one_of(JSON_VALUES, st.fixed_dictionaries({}, optional={f: JSON_VALUES for f in FIELDS})))
def test_hostile_bodies_never_get_a_5xx(hostile_app, body):
    app, data, root = hostile_app
    before = snapshot(root)
    response = app.test_client().post("/generate_images", data=json.dumps(body),
                                      content_type="application/x-www-form-urlencoded")
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    if response.status_code != 200:
        assert snapshot(root) == before


@HOSTILE_SETTINGS
@given(folder=PATHLIKE, prefix=PATHLIKE)
def test_hostile_folders_and_prefixes_stay_inside_the_store(hostile_app, folder, prefix):
    app, data, root = hostile_app
    before = snapshot(root)
    body = {"prompt": "p", "output_folder": folder, "file_name_prefix": prefix, "count": 1,
            "width": 320, "height": 704}
    response = app.test_client().post("/generate_images", json=body)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    written = snapshot(root) - before
    if response.status_code == 400:
        assert written == set()
        return
    (key,) = response.get_json()["images"]
    assert key.startswith(f"{folder}/{prefix}-") and key.endswith(".png")
    real_data = os.path.realpath(data)
    for path in written:
        assert os.path.realpath(path).startswith(real_data + os.sep)
    assert os.path.join(str(data), key) in written
