"""The stand-in's Stability models, regions and GetFoundationModel, driven by real boto3 clients."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from standins.aws_standin import (
    DOCUMENTED_LIFECYCLE,
    NOVA_CANVAS,
    SD3_5_LARGE,
    STABLE_IMAGE_CORE,
    STABLE_IMAGE_ULTRA,
    TITAN_V2,
    input_image_size,
    parse_knobs,
)

# The same in-process server fixtures as the Titan/Nova stand-in tests (pytest finds them by name).
from tests.test_standin import fresh_standin, standin  # noqa: F401

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
OREGON = "us-west-2"
EOL_INVOKE = (
    "This model version has reached the end of its life. Please refer to the AWS documentation for more details."
)
INVALID_ID = "The provided model identifier is invalid."
pytestmark = pytest.mark.integration


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials; nothing may reach real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def runtime(aws_env, standin):
    """Factory: a bedrock-runtime client for a region (SigV4), without retries."""
    session = boto3.session.Session()

    def make(region=OREGON):
        return session.client("bedrock-runtime", region_name=region, endpoint_url=standin.url, config=NO_RETRY)

    return make


@pytest.fixture
def control(aws_env, standin):
    """Factory: a `bedrock` control-plane client whose endpoint comes from AWS_ENDPOINT_URL_BEDROCK."""
    aws_env.setenv("AWS_ENDPOINT_URL_BEDROCK", standin.url)
    session = boto3.session.Session()

    def make(region=OREGON):
        return session.client("bedrock", region_name=region, config=NO_RETRY)

    return make


def invoke(client, body, model_id=SD3_5_LARGE):
    """Call InvokeModel; return the parsed JSON body."""
    response = client.invoke_model(modelId=model_id, body=body if isinstance(body, str) else json.dumps(body))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    return json.loads(response["body"].read())


def error_of(call) -> ClientError:
    """Run ``call`` and return the ClientError it raises."""
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def image_of(payload) -> Image.Image:
    """The single image of a Stability answer, fully decoded."""
    assert len(payload["images"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(payload["images"][0], validate=True)))
    image.load()
    return image


def pillow_bytes(width, height, fmt="PNG", **options) -> str:
    """A real input image, base64-encoded."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(out, fmt, **options)
    return base64.b64encode(out.getvalue()).decode()


# ---------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("model_id", "ratio", "size"),
    [
        (SD3_5_LARGE, None, (1024, 1024)),
        (SD3_5_LARGE, "16:9", (1344, 768)),
        (SD3_5_LARGE, "9:21", (640, 1536)),
        (STABLE_IMAGE_CORE, "1:1", (1536, 1536)),
        (STABLE_IMAGE_CORE, "21:9", (1536, 656)),
        (STABLE_IMAGE_ULTRA, None, (1536, 1536)),
        (STABLE_IMAGE_ULTRA, "2:3", (1024, 1536)),
    ],
)
def test_each_model_returns_one_png_of_the_table_size(runtime, standin, model_id, ratio, size):
    body = {"prompt": "a lighthouse at dawn", "seed": 1234}
    if ratio:
        body["aspect_ratio"] = ratio
    payload = invoke(runtime(), body, model_id)
    assert set(payload) == {"seeds", "finish_reasons", "images"}
    assert payload["seeds"] == [1234] and payload["finish_reasons"] == [None]
    image = image_of(payload)
    assert image.format == "PNG" and image.size == size
    stats = standin.stats()
    assert stats["invoke_calls_by_model"] == {model_id: 1}
    assert stats["images_by_model"] == {model_id: 1} and stats["images_generated"] == 1


def test_seed_repeats_and_zero_or_absent_is_random(runtime):
    client = runtime()
    first = invoke(client, {"prompt": "cat", "seed": 5})
    assert first == invoke(client, {"prompt": "cat", "seed": 5})
    drawn = [invoke(client, {"prompt": "cat", "seed": 0}), invoke(client, {"prompt": "cat"})]
    for payload in drawn:
        assert 1 <= payload["seeds"][0] <= 4294967294
    assert drawn[0]["images"] != drawn[1]["images"] != first["images"]


def test_core_and_ultra_accept_seed_4294967295_but_sd35_does_not(runtime):
    client = runtime()
    for model_id in (STABLE_IMAGE_CORE, STABLE_IMAGE_ULTRA):
        assert invoke(client, {"prompt": "cat", "seed": 4294967295}, model_id)["seeds"] == [4294967295]
    error = error_of(lambda: invoke(client, {"prompt": "cat", "seed": 4294967295}))
    assert "#/seed: 4294967295 is not less or equal to 4294967294" in error.response["Error"]["Message"]


@pytest.mark.parametrize(("model_id", "fmt", "pillow_format"), [
    (SD3_5_LARGE, "jpeg", "JPEG"),
    (SD3_5_LARGE, "webp", "WEBP"),
    (STABLE_IMAGE_CORE, "jpeg", "JPEG"),
])
def test_jpeg_and_webp_outputs(runtime, model_id, fmt, pillow_format):
    payload = invoke(runtime(), {"prompt": "cat", "output_format": fmt, "aspect_ratio": "3:2"}, model_id)
    image = image_of(payload)
    assert image.format == pillow_format
    assert image.size == ((1216, 832) if model_id == SD3_5_LARGE else (1536, 1024))


@pytest.mark.parametrize(
    ("image_b64", "size"),
    [
        (pillow_bytes(600, 400), (1216, 832)),  # 3:2 input -> the 3:2 table entry
        (pillow_bytes(400, 600, "JPEG"), (832, 1216)),
        (pillow_bytes(300, 300, "WEBP", lossless=True), (1024, 1024)),
        (pillow_bytes(700, 300, "WEBP", quality=80), (1536, 640)),
    ],
)
def test_sd35_image_to_image_sizes_follow_the_input_shape(runtime, image_b64, size):
    body = {"prompt": "in watercolour", "mode": "image-to-image", "image": image_b64, "strength": 0.7}
    assert image_of(invoke(runtime(), body)).size == size


def test_webp_header_variants_are_measured():
    for options in ({"lossless": True}, {"quality": 70}, {"exif": b"Exif\0\0"}):  # VP8L, VP8, VP8X
        assert input_image_size(base64.b64decode(pillow_bytes(123, 77, "WEBP", **options))) == (123, 77)


def test_flag_marker_reaches_rekognition_from_png_and_jpeg(aws_env, runtime, standin):
    rekognition = boto3.session.Session().client("rekognition", endpoint_url=standin.url, config=NO_RETRY)
    for fmt in ("png", "jpeg"):
        payload = invoke(runtime(), {"prompt": "harbour [[flag:Weapons]]", "output_format": fmt})
        data = base64.b64decode(payload["images"][0])
        labels = rekognition.detect_moderation_labels(Image={"Bytes": data})["ModerationLabels"]
        assert [label["Name"] for label in labels] == ["Weapons", "Violence"]


# ---------------------------------------------------------------- validation

LONG = "p" * 10_001


@pytest.mark.parametrize(
    ("model_id", "body", "expected"),
    [
        (SD3_5_LARGE, {"seed": 1}, "#: required key [prompt] not found"),
        (SD3_5_LARGE, {"prompt": ""}, "#/prompt: prompt must not be blank"),
        (STABLE_IMAGE_CORE, {"prompt": "  \n "}, "#/prompt: prompt must not be blank"),
        (STABLE_IMAGE_ULTRA, {"prompt": LONG}, "#/prompt: expected maxLength: 10000, actual: 10001"),
        (SD3_5_LARGE, {"prompt": 5}, "#/prompt: expected type: String, found: Integer"),
        (SD3_5_LARGE, {"prompt": "x", "negative_prompt": LONG}, "#/negative_prompt: expected maxLength: 10000"),
        (SD3_5_LARGE, {"prompt": "x", "aspect_ratio": "7:3"}, "#/aspect_ratio: 7:3 is not a valid enum value"),
        (STABLE_IMAGE_CORE, {"prompt": "x", "seed": -1}, "#/seed: -1 is not greater or equal to 0"),
        (STABLE_IMAGE_CORE, {"prompt": "x", "seed": 4294967296}, "#/seed: 4294967296 is not less or equal"),
        (SD3_5_LARGE, {"prompt": "x", "seed": "5"}, "#/seed: expected type: Integer, found: String"),
        (SD3_5_LARGE, {"prompt": "x", "output_format": "gif"}, "#/output_format: gif is not a valid enum value"),
        (STABLE_IMAGE_ULTRA, {"prompt": "x", "output_format": "webp"}, "#/output_format: webp is not a valid"),
        (STABLE_IMAGE_CORE, {"prompt": "x", "mode": "image-to-image"}, "#/mode: image-to-image is not a valid"),
        (SD3_5_LARGE, {"prompt": "x", "mode": "inpaint"}, "#/mode: inpaint is not a valid enum value"),
        (SD3_5_LARGE, {"prompt": "x", "style_preset": "anime"}, "#: extraneous key [style_preset] is not permitted"),
        (STABLE_IMAGE_CORE, {"prompt": "x", "cfg_scale": 7}, "#: extraneous key [cfg_scale] is not permitted"),
        (STABLE_IMAGE_ULTRA, {"prompt": "x", "strength": 0.3}, "#: extraneous key [strength] is not permitted"),
        (SD3_5_LARGE, {"prompt": "x", "strength": 0.3}, "#: key [strength] is not permitted in text-to-image mode"),
        (
            SD3_5_LARGE,
            {"prompt": "x", "mode": "image-to-image", "image": pillow_bytes(80, 80), "strength": 0.5,
             "aspect_ratio": "1:1"},
            "#: key [aspect_ratio] is not permitted in image-to-image mode",
        ),
        (
            SD3_5_LARGE,
            {"prompt": "x", "mode": "image-to-image", "image": pillow_bytes(80, 80)},
            "#: required key [strength] not found",
        ),
        (
            SD3_5_LARGE,
            {"prompt": "x", "mode": "image-to-image", "image": pillow_bytes(80, 80), "strength": 1.5},
            "#/strength: 1.5 is not less or equal to 1.0",
        ),
        (SD3_5_LARGE, {"prompt": "x", "mode": "image-to-image", "strength": 0.5}, "#: required key [image] not found"),
        (
            SD3_5_LARGE,
            {"prompt": "x", "mode": "image-to-image", "image": "bm90IGFuIGltYWdl", "strength": 0.5},
            "#/image: image must be a base64-encoded JPEG, PNG or WebP",
        ),
        (
            SD3_5_LARGE,
            {"prompt": "x", "mode": "image-to-image", "image": pillow_bytes(63, 200), "strength": 0.5},
            "#/image: every side must be at least 64 pixels",
        ),
    ],
)
def test_invalid_bodies_are_validation_exceptions(runtime, standin, model_id, body, expected):
    error = error_of(lambda: invoke(runtime(), body, model_id))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message = error.response["Error"]["Message"]
    assert message.startswith("Malformed input request: " + expected)
    assert message.endswith(", please reformat your input and try again.")
    assert standin.stats()["images_by_model"] == {}


def test_non_object_body_is_malformed(runtime):
    error = error_of(lambda: invoke(runtime(), "[1, 2]"))
    assert error.response["Error"]["Message"].startswith("Malformed input request: #: expected type: JSONObject")


# ---------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        ("[[blocked]]", "Filter reason: prompt"),
        ("[[blocked-output]]", "Filter reason: output image"),
        ("[[inference-error]]", "Inference error"),
    ],
)
def test_markers_give_a_200_with_a_finish_reason_and_no_image(runtime, standin, marker, reason):
    payload = invoke(runtime(), {"prompt": f"a cat {marker}"}, STABLE_IMAGE_CORE)
    assert payload == {"finish_reasons": [reason]}  # Part B 1.6: no seeds, no images
    stats = standin.stats()
    assert stats["finish_reasons"] == {reason: 1}
    assert stats["blocked_outputs"] == (marker == "[[blocked-output]]")
    assert stats["images_generated"] == 0 and stats["images_by_model"] == {}
    assert stats["errors_returned"] == {}


# ---------------------------------------------------------------- regions


@pytest.mark.parametrize(
    ("model_id", "region"),
    [
        (SD3_5_LARGE, "us-east-1"),
        (STABLE_IMAGE_CORE, "eu-west-1"),
        (STABLE_IMAGE_ULTRA, "us-east-2"),
        (NOVA_CANVAS, OREGON),
        (TITAN_V2, "eu-west-1"),
        (f"arn:aws:bedrock:us-west-2::foundation-model/{STABLE_IMAGE_CORE}", "us-east-1"),
    ],
)
def test_model_outside_its_regions_is_an_invalid_identifier(runtime, model_id, region):
    body = {"prompt": "cat"} if "stability" in model_id else json.dumps(
        {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "cat"}}
    )
    error = error_of(lambda: invoke(runtime(region), body, model_id))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Message"] == INVALID_ID


def test_models_work_in_their_regions(runtime):
    titan = json.dumps({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "cat"}})
    assert len(invoke(runtime(OREGON), titan, TITAN_V2)["images"]) == 1
    assert len(invoke(runtime("eu-west-1"), titan, NOVA_CANVAS)["images"]) == 1
    assert len(invoke(runtime("ap-northeast-1"), titan, NOVA_CANVAS)["images"]) == 1


def test_bearer_calls_skip_the_region_check(aws_env, standin):
    aws_env.setenv("AWS_BEARER_TOKEN_BEDROCK", "dummy-token")
    client = boto3.session.Session().client("bedrock-runtime", region_name="us-east-1", endpoint_url=standin.url)
    assert len(invoke(client, {"prompt": "cat"})["images"]) == 1
    assert standin.stats()["auth_schemes"] == {"bearer": 1}


# ---------------------------------------------------------------- lifecycle on InvokeModel


def test_retired_model_is_end_of_life_and_others_still_work(runtime, standin):
    standin.configure(retired_models=[STABLE_IMAGE_ULTRA, "stability.stable-diffusion-xl-v1"])
    client = runtime()
    for model_id in (STABLE_IMAGE_ULTRA, "stability.stable-diffusion-xl-v1"):
        error = error_of(lambda model_id=model_id: invoke(client, {"prompt": "cat"}, model_id))
        assert error.response["Error"]["Code"] == "ResourceNotFoundException"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert error.response["Error"]["Message"] == EOL_INVOKE
        assert isinstance(error, client.exceptions.ResourceNotFoundException)
    assert len(invoke(client, {"prompt": "cat"}, STABLE_IMAGE_CORE)["images"]) == 1
    assert standin.stats()["images_by_model"] == {STABLE_IMAGE_CORE: 1}


def test_no_access_model_is_access_denied_but_still_described(runtime, control, standin):
    standin.configure(no_access_models=[SD3_5_LARGE])
    error = error_of(lambda: invoke(runtime(), {"prompt": "cat"}))
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Message"] == "You don't have access to the model with the specified model ID."
    details = control().get_foundation_model(modelIdentifier=SD3_5_LARGE)["modelDetails"]
    assert details["modelLifecycle"] == {"status": "ACTIVE"}


def test_legacy_model_still_invokes(runtime, standin):
    standin.configure(legacy_models={STABLE_IMAGE_CORE: {"legacyTime": "2026-10-01", "endOfLifeTime": "2027-04-01"}})
    assert len(invoke(runtime(), {"prompt": "cat"}, STABLE_IMAGE_CORE)["images"]) == 1


# ---------------------------------------------------------------- GetFoundationModel


def test_get_foundation_model_active(control, standin):
    response = control().get_foundation_model(modelIdentifier=STABLE_IMAGE_CORE)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["modelDetails"] == {
        "modelArn": f"arn:aws:bedrock:us-west-2::foundation-model/{STABLE_IMAGE_CORE}",
        "modelId": STABLE_IMAGE_CORE,
        "modelName": "Stable Image Core 1.0",
        "providerName": "Stability AI",
        "inputModalities": ["TEXT"],
        "outputModalities": ["IMAGE"],
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    }
    stats = standin.stats()
    assert stats["control_plane_calls"] == 1
    assert stats["control_plane_calls_by_model"] == {STABLE_IMAGE_CORE: 1}
    assert stats["invoke_calls"] == 0


def test_get_foundation_model_by_arn_uses_the_request_region(control):
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN_V2}"
    details = control("us-east-1").get_foundation_model(modelIdentifier=arn)["modelDetails"]
    assert details["modelId"] == TITAN_V2 and details["modelArn"] == arn
    assert details["modelLifecycle"]["status"] == "ACTIVE"


def test_get_foundation_model_legacy_dates_are_datetimes(control, standin):
    lifecycles = dict(DOCUMENTED_LIFECYCLE)
    lifecycles[TITAN_V2] = {**lifecycles[TITAN_V2], "publicExtendedAccessTime": "2026-04-01T12:00:00+02:00"}
    standin.configure(legacy_models=lifecycles)
    client = control("us-east-1")
    nova = client.get_foundation_model(modelIdentifier=NOVA_CANVAS)["modelDetails"]["modelLifecycle"]
    assert nova == {
        "status": "LEGACY",
        "legacyTime": datetime(2026, 3, 30, tzinfo=UTC),
        "endOfLifeTime": datetime(2026, 9, 30, tzinfo=UTC),
    }
    titan = client.get_foundation_model(modelIdentifier=TITAN_V2)["modelDetails"]["modelLifecycle"]
    assert titan["status"] == "LEGACY"
    assert titan["endOfLifeTime"] == datetime(2026, 6, 30, tzinfo=UTC)
    assert titan["publicExtendedAccessTime"] == datetime(2026, 4, 1, 10, tzinfo=UTC)


def test_get_foundation_model_retired_is_resource_not_found(control, standin):
    standin.configure(retired_models=[NOVA_CANVAS, "amazon.nova-sonic-v1:0"])
    client = control("us-east-1")
    for model_id in (NOVA_CANVAS, "amazon.nova-sonic-v1:0"):
        error = error_of(lambda model_id=model_id: client.get_foundation_model(modelIdentifier=model_id))
        assert isinstance(error, client.exceptions.ResourceNotFoundException)
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert error.response["Error"]["Message"] == "This model version has reached the end of its life."
    assert standin.stats()["control_plane_errors_returned"] == {"ResourceNotFoundException": 2}


@pytest.mark.parametrize(
    ("identifier", "region", "code", "status"),
    [
        (SD3_5_LARGE, "us-east-1", "ResourceNotFoundException", 404),  # not offered in that region
        ("amazon.titan-image-generator-v9:0", "us-east-1", "ResourceNotFoundException", 404),
        ("not a model id", "us-east-1", "ValidationException", 400),
    ],
)
def test_get_foundation_model_unknown_or_malformed(control, identifier, region, code, status):
    client = control(region)
    error = error_of(lambda: client.get_foundation_model(modelIdentifier=identifier))
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status


@pytest.mark.parametrize(
    ("code", "status"),
    [("AccessDeniedException", 403), ("ThrottlingException", 429), ("InternalServerException", 500)],
)
def test_control_plane_error_answers_every_call(control, standin, code, status):
    standin.configure(control_plane_error=code)
    client = control()
    error = error_of(lambda: client.get_foundation_model(modelIdentifier=STABLE_IMAGE_CORE))
    assert isinstance(error, getattr(client.exceptions, code))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.response["Error"]["Message"]
    assert standin.stats()["control_plane_errors_returned"] == {code: 1}


# ---------------------------------------------------------------- knobs


def test_lifecycle_knobs_over_http_and_reset(standin):
    def call(path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(standin.url + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    knobs = call(
        "/_standin/config",
        {
            "legacy_models": {NOVA_CANVAS: {"legacyTime": "2026-03-30", "endOfLifeTime": "2026-09-30"}},
            "retired_models": [TITAN_V2],
            "no_access_models": [SD3_5_LARGE],
            "control_plane_error": "ThrottlingException",
        },
    )
    assert knobs["legacy_models"] == {
        NOVA_CANVAS: {"legacyTime": "2026-03-30T00:00:00Z", "endOfLifeTime": "2026-09-30T00:00:00Z"}
    }
    assert knobs["retired_models"] == [TITAN_V2] and knobs["no_access_models"] == [SD3_5_LARGE]
    for bad in (
        {"legacy_models": {NOVA_CANVAS: {"legacyTime": "2026-03-30"}}},
        {"legacy_models": {NOVA_CANVAS: {"legacyTime": "soon", "endOfLifeTime": "2026-09-30"}}},
        {"control_plane_error": "ValidationException"},
    ):
        with pytest.raises(urllib.error.HTTPError) as info:
            call("/_standin/config", bad)
        assert info.value.code == 400
    call("/_standin/reset", {})
    knobs = call("/_standin/config")
    assert knobs["legacy_models"] == {} and knobs["retired_models"] == [] and knobs["control_plane_error"] == ""


def test_cli_style_string_values_parse():
    knobs = parse_knobs(
        {
            "legacy_models": json.dumps({TITAN_V2: {"legacyTime": "2025-12-30", "endOfLifeTime": "2026-06-30"}}),
            "retired_models": f"{NOVA_CANVAS},{SD3_5_LARGE}",
            "control_plane_error": "AccessDeniedException",
        }
    )
    assert knobs["legacy_models"][TITAN_V2]["endOfLifeTime"] == "2026-06-30T00:00:00Z"
    assert knobs["retired_models"] == {NOVA_CANVAS, SD3_5_LARGE}
