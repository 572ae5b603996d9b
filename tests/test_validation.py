"""Request validation: every rule names its field, and the model's own limits apply."""

from __future__ import annotations

import pytest

from generation.errors import InvalidRequest
from generation.model_registry import NOVA_CANVAS, TITAN_V2
from image_generation import spec_for
from web.problems import status_of
from web.request_schema import parse_generation_request

pytestmark = pytest.mark.unit

GOOD = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}


def parse(profile=TITAN_V2, **changes):
    body = {**GOOD, **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    return parse_generation_request(body, profile, default_quality="premium")


def fields_of(error: InvalidRequest) -> set[str]:
    return {e["field"] for e in error.extra["errors"]}


def test_validation_accepts_the_original_body_with_defaults():
    request = parse()
    assert (request.count, request.width, request.height, request.quality) == (4, 1024, 1024, "premium")
    # No cfg_scale asked: each model gets its own default when the call is made (fallbacks differ).
    assert request.cfg_scale is None and request.seed is None
    assert spec_for(TITAN_V2, request, 1).cfg_scale == 8.0


def test_validation_uses_nova_canvas_defaults_and_longer_prompt():
    request = parse(NOVA_CANVAS, prompt="x" * 1024)
    assert spec_for(NOVA_CANVAS, request, 1).cfg_scale == 6.5 and len(request.prompt) == 1024


@pytest.mark.parametrize("changes, field", [
    ({"prompt": ...}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "x" * 513}, "prompt"),
    ({"prompt": "bad\x00byte"}, "prompt"),
    ({"prompt": "lone \ud800 surrogate"}, "prompt"),
    ({"negative_prompt": "y" * 513}, "negative_prompt"),
    ({"negative_prompt": None}, "negative_prompt"),
    ({"quality": None}, "quality"),
    ({"cfg_scale": None}, "cfg_scale"),
    ({"output_folder": ...}, "output_folder"),
    ({"output_folder": "/etc"}, "output_folder"),
    ({"output_folder": "../etc"}, "output_folder"),
    ({"output_folder": "a/../b"}, "output_folder"),
    ({"output_folder": "a//b"}, "output_folder"),
    ({"output_folder": "a/./b"}, "output_folder"),
    ({"output_folder": "a/"}, "output_folder"),
    ({"output_folder": "a\nb"}, "output_folder"),
    ({"output_folder": "a\\b"}, "output_folder"),
    ({"output_folder": "caf\u00e9"}, "output_folder"),
    ({"output_folder": "a" * 1100}, "output_folder"),
    ({"output_folder": ["a"]}, "output_folder"),
    ({"file_name_prefix": "a/b"}, "file_name_prefix"),
    ({"file_name_prefix": ".."}, "file_name_prefix"),
    ({"file_name_prefix": ""}, "file_name_prefix"),
    ({"file_name_prefix": "x y"}, "file_name_prefix"),
    ({"count": 0}, "count"),
    ({"count": 6}, "count"),
    ({"count": "4"}, "count"),
    ({"count": True}, "count"),
    ({"count": 2.5}, "count"),
    ({"width": 1000}, "height"),  # half a size: the missing half is named, and nothing else
    ({"width": 1000, "height": 1000}, "width"),
    ({"width": 1408, "height": 1408}, "width"),
    ({"quality": "ultra"}, "quality"),
    ({"cfg_scale": 1.0}, "cfg_scale"),
    ({"cfg_scale": 10.5}, "cfg_scale"),
    ({"cfg_scale": "8"}, "cfg_scale"),
    ({"seed": -1}, "seed"),
    ({"seed": 2_147_483_647}, "seed"),
    ({"seed": None}, "seed"),
    ({"colour": "red"}, "colour"),
])
def test_validation_rejects_and_names_the_field(changes, field):
    with pytest.raises(InvalidRequest) as caught:
        parse(**changes)
    assert field in fields_of(caught.value)
    assert status_of(caught.value.code) == 400


def test_validation_rejects_a_body_that_is_not_an_object():
    with pytest.raises(InvalidRequest) as caught:
        parse_generation_request(["prompt"], TITAN_V2, default_quality="premium")
    assert fields_of(caught.value) == {"body"}


def test_validation_reports_every_bad_field_at_once():
    with pytest.raises(InvalidRequest) as caught:
        parse(prompt="", output_folder="../x", count=9)
    assert fields_of(caught.value) == {"prompt", "output_folder", "count"}


def test_validation_counts_the_root_prefix_in_the_key_length():
    folder, prefix = "/".join(["f" * 255] * 3 + ["f" * 12]), "p" * 200  # 780 characters in 255-byte segments
    assert len(folder) == 780
    parse(output_folder=folder, file_name_prefix=prefix)
    with pytest.raises(InvalidRequest):
        parse_generation_request({**GOOD, "output_folder": folder, "file_name_prefix": prefix}, TITAN_V2,
                                 default_quality="premium", root_prefix="r" * 30 + "/")


def test_validation_limits_folder_and_prefix_lengths():
    with pytest.raises(InvalidRequest):
        parse(output_folder="f" * 781)
    with pytest.raises(InvalidRequest):
        parse(file_name_prefix="p" * 201)


def test_validation_accepts_every_allowed_option():
    request = parse(count=5, negative_prompt="blurry", width=1173, height=640, quality="standard",
                    cfg_scale=1.1, seed=2_147_483_646)
    assert (request.count, request.width, request.height, request.seed) == (5, 1173, 640, 2_147_483_646)
    assert request.quality == "standard" and request.negative_prompt == "blurry"


def test_a_lone_surrogate_is_named_as_invalid_unicode():
    with pytest.raises(InvalidRequest) as caught:
        parse(prompt="lone \ud800 surrogate")
    assert caught.value.extra["errors"] == [{"field": "prompt", "message": "must be valid Unicode text"}]
