"""POST /edit_images on today's models through boto3 over HTTP (the stand-in), S3 on moto."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from generation.png import png_size

pytest_plugins = ["tests.aws_fixtures"]
pytestmark = pytest.mark.integration

TITAN = "amazon.titan-image-generator-v2:0"
NOVA = "amazon.nova-canvas-v1:0"
CORE = "stability.stable-image-core-v1:1"
SD35 = "stability.sd3-5-large-v1:0"


def service(name: str) -> str:
    return f"us.stability.{name}-v1:0"


def picture(size=(512, 512), seed=1) -> str:
    """A noisy RGB PNG, base64."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def mask(size=(512, 512)) -> str:
    image = Image.new("L", size, 0)
    image.paste(255, (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def edit(made, **fields):
    body = {"output_folder": "edits", "file_name_prefix": "e", "count": 2, **fields}
    return made.client.post("/edit_images", json=body)


def stored(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# Nova Canvas and Titan v2 do the same task types: each task on both.
AMAZON_CASES = [
    ({"task": "variation", "prompt": "the same", "similarity": 0.7, "width": 512, "height": 512}, (512, 512)),
    ({"task": "inpaint", "prompt": "a blue sky", "mask_prompt": "sky"}, (512, 512)),
    ({"task": "inpaint", "prompt": "a blue sky", "mask_image": mask()}, (512, 512)),
    ({"task": "outpaint", "prompt": "more road", "mask_image": mask(), "outpainting_mode": "precise"},
     (512, 512)),
    ({"task": "remove_background"}, (512, 512)),
    ({"task": "color_guided", "prompt": "a car", "colors": ["#ff0000", "#112233"], "width": 768, "height": 768},
     (768, 768)),
    ({"task": "condition", "prompt": "a car at night", "control_mode": "segmentation", "width": 512,
      "height": 512}, (512, 512)),
]
CASES = [
    (SD35, {"task": "variation", "prompt": "the same car, at dusk", "strength": 0.6}, (1024, 1024)),
    *[(model, fields, size) for model in (NOVA, TITAN) for fields, size in AMAZON_CASES],
    (service("stable-image-inpaint"), {"task": "inpaint", "prompt": "a blue sky", "mask_image": mask(),
                                       "grow_mask": 3}, (512, 512)),
    (service("stable-outpaint"), {"task": "outpaint", "left": 64, "right": 64, "up": 32}, (640, 544)),
    (service("stable-image-search-replace"), {"task": "search_replace", "prompt": "a bicycle",
                                              "search_prompt": "car"}, (512, 512)),
    (service("stable-image-search-recolor"), {"task": "recolor", "prompt": "green", "search_prompt": "car"},
     (512, 512)),
    (service("stable-image-erase-object"), {"task": "erase", "mask_image": mask()}, (512, 512)),
    (service("stable-image-remove-background"), {"task": "remove_background"}, (512, 512)),
    (service("stable-fast-upscale"), {"task": "upscale"}, (2048, 2048)),
    (service("stable-conservative-upscale"), {"task": "upscale", "upscale": "conservative", "prompt": "sharp"},
     (2048, 2048)),
    (service("stable-creative-upscale"), {"task": "upscale", "upscale": "creative", "prompt": "sharp",
                                          "creativity": 0.3}, (2048, 2048)),
    (service("stable-image-control-sketch"), {"task": "condition", "prompt": "a car", "control_strength": 0.5},
     (512, 512)),
    (service("stable-image-control-structure"), {"task": "condition", "prompt": "a car",
                                                 "control_mode": "structure"}, (512, 512)),
    (service("stable-image-style-guide"), {"task": "style", "prompt": "in watercolour", "aspect_ratio": "1:1"},
     (1536, 1536)),
    (service("stable-style-transfer"), {"task": "style", "style": "transfer", "style_image": picture(seed=2)},
     (512, 512)),
]


@pytest.mark.parametrize(("model", "fields", "size"), CASES, ids=[f"{c[1]['task']}-{c[0]}" for c in CASES])
def test_each_task_on_each_model_makes_images_of_the_expected_size(aws_app, standin, s3, bucket, model, fields,
                                                                    size):
    made = aws_app()
    response = edit(made, model=model, image=picture(), **fields)
    assert response.status_code == 200, response.get_json()
    manifest = response.get_json()
    assert manifest["task"] == fields["task"] and manifest["source"].startswith("upload:sha256:")
    for detail in manifest["image_details"]:
        assert detail["model_id"] == model and (detail["width"], detail["height"]) == size
        data = stored(s3, bucket, detail["key"])
        assert png_size(data) == size
        if fields["task"] == "remove_background":
            with Image.open(io.BytesIO(data)) as image:
                assert "A" in image.getbands()
    assert standin.stats()["invoke_calls_by_model"] == {model: 2}


def test_a_variation_of_an_image_the_service_made_a_moment_before(aws_app, standin, s3, bucket):
    made = aws_app()
    made_by_core = made.client.post("/generate_images", json={
        "prompt": "a red porsche", "output_folder": "cars", "file_name_prefix": "p", "model": CORE, "count": 1})
    source = made_by_core.get_json()["images"][0]
    response = edit(made, task="variation", source_key=source, prompt="the same, in snow", count=1)
    assert response.status_code == 200, response.get_json()
    manifest = response.get_json()
    assert manifest["model_id"] == SD35 and manifest["source"] == source  # no model named: the active one
    record = stored(s3, bucket, manifest["record"]).decode()
    assert source in record and '"task": "variation"' in record


@pytest.mark.parametrize(("fields", "status", "code"), [
    ({"task": "variation", "model": SD35, "image": base64.b64encode(b"GIF89a not really").decode()}, 400,
     "invalid_request"),
    ({"task": "inpaint", "model": service("stable-image-inpaint"), "prompt": "sky",
      "mask_image": mask((128, 128))}, 400, "invalid_request"),
    ({"task": "upscale", "model": service("stable-fast-upscale"), "image": picture((1100, 1100))}, 400,
     "invalid_request"),
    ({"task": "variation", "model": CORE}, 400, "invalid_request"),  # Core cannot: names those that can
    ({"task": "inpaint", "model": NOVA, "prompt": "sky"}, 400, "invalid_request"),  # where? no mask, no call
    ({"task": "inpaint", "model": service("stable-image-inpaint"), "prompt": "sky"}, 400, "invalid_request"),
    ({"task": "variation", "prompt": "p", "source_key": "quarantine/cars/p-1.png"}, 404, "source_not_found"),
    ({"task": "variation", "prompt": "p", "source_key": "cars/.requests/abc.json"}, 404, "source_not_found"),
])
def test_bad_inputs_get_a_clear_4xx_with_no_paid_call_and_nothing_stored(aws_app, standin, s3, bucket, fields,
                                                                          status, code):
    made = aws_app()
    body = {"image": picture(), "prompt": "p", **fields} if "source_key" not in fields else fields
    response = edit(made, **body)
    assert response.status_code == status and response.get_json()["code"] == code, response.get_json()
    assert standin.stats()["invoke_calls"] == 0
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == []


def test_a_model_that_cannot_do_the_task_is_refused_naming_those_that_can(aws_app, standin):
    response = edit(aws_app(), task="variation", model=CORE, image=picture())
    message = response.get_json()["errors"][0]["message"]
    assert response.status_code == 400 and SD35 in message and NOVA in message


def test_a_flagged_input_is_refused_and_nothing_is_paid_for(aws_app, standin, s3, bucket):
    standin.configure(flag_all="Explicit Nudity")
    response = edit(aws_app(), task="variation", image=picture(), prompt="p")
    assert response.status_code == 400 and response.get_json()["code"] == "input_flagged"
    assert standin.stats()["invoke_calls"] == 0 and standin.stats()["rekognition_calls"] == 1


def test_an_oversized_edit_body_is_a_413_naming_the_limit(aws_app, standin):
    made = aws_app(AIG_MAX_EDIT_BODY_BYTES="100000")
    response = edit(made, task="variation", image=picture((400, 400)), prompt="p")
    assert response.status_code == 413 and "100000 bytes" in response.get_json()["detail"]
    assert standin.stats()["invoke_calls"] == 0
