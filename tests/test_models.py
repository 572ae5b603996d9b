"""Today's Bedrock models through boto3 over HTTP: each model, the caller's choice, fallback, lifecycle, /models."""

from __future__ import annotations

import time

import pytest

from generation.png import png_size

pytest_plugins = ["tests.aws_fixtures"]
pytestmark = pytest.mark.integration

TITAN = "amazon.titan-image-generator-v2:0"
NOVA = "amazon.nova-canvas-v1:0"
CORE = "stability.stable-image-core-v1:1"
ULTRA = "stability.stable-image-ultra-v1:1"
SD35 = "stability.sd3-5-large-v1:0"
CURL_BODY = '{"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}'


def generate(made, **fields):
    body = {"prompt": "a red porsche", "output_folder": "cars", "file_name_prefix": "p", **fields}
    return made.client.post("/generate_images", json=body)


def stored_size(s3, bucket, key) -> tuple[int, int]:
    return png_size(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def wait_for_lifecycle(made) -> None:
    """The first GetFoundationModel round runs in the background at start-up; wait for it."""
    assert made.services.lifecycle.checked.wait(10), "the lifecycle check did not finish"


@pytest.mark.parametrize(("model", "fields", "size"), [
    (TITAN, {"width": 768, "height": 1152}, (768, 1152)),
    (NOVA, {"width": 1152, "height": 640}, (1152, 640)),
    # Stability picks the pixels for a ratio; the stand-in's table says 1536x1536 (Core at 1:1, as AWS observed).
    (CORE, {}, (1536, 1536)),
    (ULTRA, {"aspect_ratio": "16:9"}, (1536, 864)),
    # Asked as a size: the nearest ratio (1024x576 is 16:9), the real size read from the PNG.
    (SD35, {"width": 1024, "height": 576}, (1344, 768)),
])
def test_each_model_makes_four_pngs_of_the_expected_size(aws_app, standin, s3, bucket, model, fields, size):
    made = aws_app()
    response = generate(made, model=model, **fields)
    assert response.status_code == 200, response.get_json()
    manifest = response.get_json()
    assert manifest["model_id"] == model and len(manifest["images"]) == 4
    for detail in manifest["image_details"]:
        assert detail["model_id"] == model and (detail["width"], detail["height"]) == size
        assert stored_size(s3, bucket, detail["key"]) == size
    assert standin.stats()["invoke_calls_by_model"] == {model: 4}


def test_stability_seeds_number_the_images_and_are_reported(aws_app, standin):
    manifest = generate(aws_app(), model=CORE, seed=41, count=3).get_json()
    assert [d["seed"] for d in manifest["image_details"]] == [41, 42, 43]


def test_stability_content_filter_inside_a_200_is_a_400(aws_app, standin, s3, bucket):
    response = generate(aws_app(), model=CORE, prompt="a beach [[blocked]]")
    assert response.status_code == 400 and response.get_json()["code"] == "content_filtered"
    assert "prompt" in response.get_json()["detail"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert [k for k in keys if "/." not in "/" + k] == []  # only the request's record, no image


def test_with_titan_retired_the_original_curl_line_is_answered_by_the_next_model(aws_app, standin, s3, bucket):
    standin.configure(retired_models=[TITAN])
    made = aws_app(AIG_BEDROCK_LIFECYCLE_CHECK_SECONDS="0")  # no lifecycle check: learn it from the refusal
    response = made.client.post("/generate_images", data=CURL_BODY)
    assert response.status_code == 200, response.get_json()
    manifest = response.get_json()
    assert len(manifest["images"]) == 4 and manifest["model_id"] == NOVA
    for detail in manifest["image_details"]:
        assert detail["model_id"] == NOVA
        assert [s["model_id"] for s in detail["skipped_models"]] == [TITAN]
        assert "end of its life" in detail["skipped_models"][0]["reason"]
    first = standin.stats()["invoke_calls_by_model"]
    assert first[NOVA] == 4 and first[TITAN] <= 4  # refusals are not billed; Nova made each image once
    # The refusal is remembered: the next request does not knock on Titan again.
    assert made.client.post("/generate_images", data=CURL_BODY).status_code == 200
    second = standin.stats()["invoke_calls_by_model"]
    assert second[TITAN] == first[TITAN] and second[NOVA] == 8
    assert standin.stats()["images_by_model"] == {NOVA: 8}


def test_a_model_the_lifecycle_check_knows_retired_is_skipped_without_a_call(aws_app, standin):
    standin.configure(retired_models=[TITAN])
    made = aws_app()
    wait_for_lifecycle(made)
    models = made.client.get("/models").get_json()
    titan = next(m for m in models["models"] if m["id"] == TITAN)
    assert titan["available"] is False and titan["lifecycle"]["status"] == "RETIRED"
    assert made.client.post("/generate_images", data=CURL_BODY).status_code == 200
    assert TITAN not in standin.stats()["invoke_calls_by_model"]


def test_a_named_retired_model_is_refused_with_503_and_no_fallback(aws_app, standin):
    standin.configure(retired_models=[TITAN])
    response = generate(aws_app(AIG_BEDROCK_LIFECYCLE_CHECK_SECONDS="0"), model=TITAN)
    assert response.status_code == 503 and response.get_json()["code"] == "model_unavailable"
    assert NOVA not in standin.stats()["invoke_calls_by_model"]


def test_a_legacy_models_answers_carry_deprecation_and_sunset(aws_app, standin):
    standin.configure(legacy_models={TITAN: {"legacyTime": "2026-10-01", "endOfLifeTime": "2027-04-01"}})
    made = aws_app()
    wait_for_lifecycle(made)
    response = generate(made, width=512, height=512, count=1)
    assert response.status_code == 200
    assert response.headers["Sunset"] == "Thu, 01 Apr 2027 00:00:00 GMT"
    assert response.headers["Deprecation"] == "@1790812800"  # 2026-10-01T00:00:00Z
    lifecycle = made.client.get("/readyz").get_json()["models"][TITAN]
    assert lifecycle["status"] == "LEGACY" and lifecycle["end_of_life_date"] == "2027-04-01"
    # An active model's answers carry neither.
    other = generate(made, model=CORE, count=1)
    assert "Sunset" not in other.headers and "Deprecation" not in other.headers


def test_no_permission_to_ask_about_lifecycles_is_one_warning_and_no_failure(aws_app, standin, caplog):
    standin.configure(control_plane_error="AccessDeniedException")
    made = aws_app()
    wait_for_lifecycle(made)
    warnings = [r for r in caplog.records if "no permission to ask Bedrock" in r.getMessage()]
    assert len(warnings) == 1
    assert made.client.post("/generate_images", data=CURL_BODY).status_code == 200
    assert all(m["lifecycle"]["status"] == "UNKNOWN" for m in made.client.get("/models").get_json()["models"])


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"model": "openai.dall-e-3"}, "model", "stability.sd3-5-large-v1:0"),
    ({"model": CORE, "cfg_scale": 7}, "cfg_scale", CORE),
    ({"model": CORE, "quality": "premium"}, "quality", CORE),
    ({"aspect_ratio": "16:9"}, "aspect_ratio", TITAN),
    ({"model": ULTRA, "aspect_ratio": "7:3"}, "aspect_ratio", "16:9"),
    ({"model": SD35, "aspect_ratio": "1:1", "width": 512, "height": 512}, "aspect_ratio", "not both"),
    ({"model": SD35, "prompt": "x" * 10_001}, "prompt", "10000"),
    ({"model": CORE, "seed": 0}, "seed", "from 1 to"),
])
def test_a_field_the_model_does_not_take_is_a_400_naming_field_and_model(aws_app, standin, fields, field, words):
    response = generate(aws_app(), **fields)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert errors[0]["field"] == field and words in errors[0]["message"], errors
    assert standin.stats()["invoke_calls"] == 0


def test_only_the_operators_allow_list_is_offered(aws_app, standin):
    made = aws_app(AIG_BEDROCK_MODEL_IDS=CORE, AIG_BEDROCK_FALLBACK_MODEL_IDS="")
    offered = [m["id"] for m in made.client.get("/models").get_json()["models"]]
    assert offered == [TITAN, CORE]
    response = generate(made, model=ULTRA)
    assert response.status_code == 400 and CORE in response.get_json()["errors"][0]["message"]


def test_models_lists_limits_tasks_prices_and_lifecycle(aws_app, standin):
    models = aws_app().client.get("/models").get_json()
    assert models["default"] == TITAN and models["fallback_chain"] == [TITAN, NOVA, CORE]
    by_id = {m["id"]: m for m in models["models"]}
    assert {m for m, entry in by_id.items() if "text_to_image" in entry["tasks"]} == {TITAN, NOVA, CORE, ULTRA, SD35}
    assert by_id["us.stability.stable-image-inpaint-v1:0"]["tasks"] == ["inpaint"]
    assert set(by_id[NOVA]["tasks"]) >= {"variation", "inpaint", "outpaint", "remove_background"}
    assert by_id[CORE]["limits"]["aspect_ratios"][0] == "1:1" and by_id[CORE]["limits"]["cfg_scale"] is None
    assert "1024x1024" in by_id[TITAN]["limits"]["sizes"] and by_id[ULTRA]["price_per_image_usd"] == "$0.14"
    assert by_id[TITAN]["lifecycle"]["end_of_life_date"] == "2026-06-30"
    assert by_id[SD35]["regions"] == ["us-west-2"] and by_id[SD35]["tasks"] == ["text_to_image", "variation"]


def test_the_openapi_document_describes_each_models_body(aws_app, standin):
    document = aws_app().client.get("/openapi.json").get_json()
    bodies = document["paths"]["/generate_images"]["post"]["requestBody"]["content"]["application/json"]
    variants = bodies["schema"]["anyOf"]
    assert len(variants) == 5
    core = next(v for v in variants if v["properties"]["model"].get("const") == CORE)
    assert "cfg_scale" not in core["properties"] and "aspect_ratio" in core["properties"]
    assert core["properties"]["prompt"]["maxLength"] == 10_000


def test_a_refused_model_is_tried_again_after_the_skip_window(aws_app, standin):
    standin.configure(no_access_models=[TITAN])
    made = aws_app(AIG_BEDROCK_LIFECYCLE_CHECK_SECONDS="0", AIG_BEDROCK_SKIP_SECONDS="1")
    assert generate(made, count=1, width=512, height=512).get_json()["model_id"] == NOVA
    standin.configure(no_access_models=[])
    time.sleep(1.1)  # the skip window itself is what is under test
    assert generate(made, count=1, width=512, height=512).get_json()["model_id"] == TITAN
