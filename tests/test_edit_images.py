"""POST /edit_images offline: every task on the placeholder, sources from the store, and every bad input refused."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from generation.png import png_size
from tests.fakes import FakeScreener

pytestmark = pytest.mark.unit

GENERATE = {"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image",
            "width": 512, "height": 512, "count": 1}


def png_b64(size=(512, 512), colour=(200, 30, 30), mode="RGB") -> str:
    out = io.BytesIO()
    Image.new(mode, size, colour if mode != "1" else 0).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def edit(client, **fields):
    body = {"output_folder": "edits", "file_name_prefix": "e", "count": 2, **fields}
    return client.post("/edit_images", json=body)


def stored_images(data_dir):
    return sorted(p for p in data_dir.rglob("*.png") if not any(part.startswith(".") for part in p.parts))


@pytest.fixture
def source(client):
    """The key of an image the service made a moment before."""
    return client.post("/generate_images", json=GENERATE).get_json()["images"][0]


@pytest.mark.parametrize(("fields", "size"), [
    ({"task": "variation", "similarity": 0.7}, (512, 512)),
    ({"task": "inpaint", "prompt": "a blue sky", "mask_prompt": "sky"}, (512, 512)),
    ({"task": "outpaint", "prompt": "more road", "left": 128, "right": 128}, (768, 512)),
    ({"task": "search_replace", "prompt": "a bicycle", "search_prompt": "car"}, (512, 512)),
    ({"task": "recolor", "prompt": "green", "search_prompt": "car"}, (512, 512)),
    ({"task": "erase"}, (512, 512)),
    ({"task": "remove_background"}, (512, 512)),
    ({"task": "upscale", "upscale": "fast"}, (2048, 2048)),
    ({"task": "color_guided", "prompt": "a car", "colors": ["#ff0000", "#00FF00"], "width": 768,
      "height": 768}, (768, 768)),
    ({"task": "condition", "prompt": "a car at night", "control_strength": 0.6}, (512, 512)),
    ({"task": "style", "style": "guide", "prompt": "in watercolour", "aspect_ratio": "1:1"}, (1024, 1024)),
])
def test_every_task_edits_an_image_the_service_made_a_moment_before(client, data_dir, source, fields, size):
    response = edit(client, source_key=source, **fields)
    assert response.status_code == 200, response.get_json()
    manifest = response.get_json()
    assert manifest["task"] == fields["task"] and manifest["source"] == source and manifest["placeholder"]
    assert len(manifest["images"]) == 2
    for detail in manifest["image_details"]:
        assert detail["task"] == fields["task"] and detail["source"] == source
        stored = data_dir / detail["key"]
        assert png_size(stored.read_bytes()) == size == (detail["width"], detail["height"])
    record = (data_dir / manifest["record"]).read_text()
    assert f'"task": "{fields["task"]}"' in record and source in record


def test_background_removal_gives_transparency(client, data_dir, source):
    manifest = edit(client, source_key=source, task="remove_background", count=1).get_json()
    with Image.open(data_dir / manifest["images"][0]) as image:
        assert image.mode == "RGBA" and image.getextrema()[3][0] == 0


def test_an_uploaded_image_can_be_edited_and_is_named_by_its_digest(client):
    manifest = edit(client, image=png_b64(), task="variation", count=1).get_json()
    assert manifest["source"].startswith("upload:sha256:")


def test_style_transfer_takes_a_second_image(client, source):
    response = edit(client, source_key=source, task="style", style="transfer", style_image=png_b64(), count=1)
    assert response.status_code == 200, response.get_json()
    missing = edit(client, source_key=source, task="style", style="transfer", count=1)
    assert missing.status_code == 400 and missing.get_json()["errors"][0]["field"] == "style_source_key"


def bomb() -> str:
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, format="PNG")  # a few KB that decode to 64 million pixels
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"task": "variation", "image": base64.b64encode(b"not an image at all").decode()}, "image", "not a PNG"),
    ({"task": "variation", "image": "%%%"}, "image", "not valid base64"),
    ({"task": "variation", "image": bomb()}, "image", "far past any model's limit"),
    ({"task": "inpaint", "image": png_b64(), "mask_image": png_b64((256, 256), (255, 255, 255))}, "mask_image",
     "it must be the image's size, 512x512"),
    ({"task": "variation"}, "source_key", "give the image to edit"),
    ({"task": "variation", "image": png_b64(), "source_key": "000/111/x.png"}, "image", "not both"),
    ({"task": "sharpen", "image": png_b64()}, "task", "must be one of"),
    ({"task": "outpaint", "image": png_b64()}, "left", "at least one of left, right, up, down"),
    ({"task": "color_guided", "prompt": "car", "colors": ["red"]}, "colors", "should match pattern"),
    ({"task": "variation", "image": png_b64(), "similarity": 0.1}, "similarity", "from 0.2 to 1.0"),
])
def test_bad_inputs_are_400s_naming_the_field_and_nothing_is_stored(client, data_dir, fields, field, words):
    before = stored_images(data_dir)
    response = edit(client, **fields)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["errors"][0]
    assert error["field"] == field and words in error["message"], error
    assert stored_images(data_dir) == before


@pytest.mark.parametrize("key", ["quarantine/000/111/a.png", "000/111/.requests/x.json", "000/111/none.png",
                                 "../etc/passwd", "/etc/passwd", "000/111"])
def test_a_source_key_that_is_private_missing_or_foreign_is_a_404(client, data_dir, key):
    (data_dir / "quarantine" / "000" / "111").mkdir(parents=True)
    (data_dir / "quarantine" / "000" / "111" / "a.png").write_bytes(base64.b64decode(png_b64()))
    response = edit(client, source_key=key, task="variation")
    assert response.status_code == 404 and response.get_json()["code"] == "source_not_found"
    assert stored_images(data_dir) == [data_dir / "quarantine/000/111/a.png"]


def test_a_flagged_input_is_refused_before_any_model_call(make_app, data_dir):
    client = make_app(screener=FakeScreener(flag_all=True)).test_client()
    response = edit(client, task="variation", image=png_b64())
    assert response.status_code == 400 and response.get_json()["code"] == "input_flagged"
    assert stored_images(data_dir) == []


def test_an_edit_body_may_be_larger_than_a_generation_body_but_is_bounded(make_app):
    client = make_app(max_edit_body_bytes=2_000_000).test_client()
    big = png_b64((1400, 1400), (1, 2, 3))
    noisy = base64.b64encode(bytes(range(256)) * 4000).decode()  # ~1.3 MB of base64, no image
    assert client.post("/generate_images", json={**GENERATE, "prompt": noisy}).status_code == 413
    assert edit(client, task="variation", image=big, count=1).status_code == 200
    too_big = edit(client, task="variation", image=noisy * 2)
    assert too_big.status_code == 413 and "2000000 bytes" in too_big.get_json()["detail"]


def test_inputs_outside_the_models_limits_are_resized_only_when_asked(client, data_dir):
    tiny = png_b64((40, 40))
    refused = edit(client, task="inpaint", image=tiny, count=1)
    assert refused.status_code == 400 and '"resize": true' in refused.get_json()["errors"][0]["message"]
    resized = edit(client, task="inpaint", image=tiny, count=1, resize=True)
    assert resized.status_code == 200
    assert min(png_size((data_dir / resized.get_json()["images"][0]).read_bytes())) >= 64


def test_an_input_is_re_encoded_without_its_metadata():
    from PIL import PngImagePlugin

    from generation.input_images import check_image
    from generation.model_registry import NOVA_CANVAS

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone@example.com")
    out = io.BytesIO()
    Image.new("RGB", (512, 512), (1, 2, 3)).save(out, format="PNG", pnginfo=info)
    assert b"someone@example.com" in out.getvalue()
    clean = check_image(out.getvalue(), NOVA_CANVAS.input_rule, field="image", model_id=NOVA_CANVAS.model_id)
    assert b"someone@example.com" not in clean and png_size(clean) == (512, 512)
