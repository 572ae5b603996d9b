"""The Bedrock/Rekognition stand-in, driven by real boto3 clients over HTTP."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import threading
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from standins.aws_standin import (
    BLOCKED_PROMPT_MESSAGE,
    NOVA_CANVAS,
    TITAN_V2,
    PngFactory,
    StandinServer,
    adler32_combine,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials for the clients; nothing may reach real AWS."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def boto_session():
    """One boto3 session for the module: it caches service models, so clients are cheap."""
    return boto3.session.Session()


@pytest.fixture(scope="module")
def standin():
    """One in-process server for the module; flat PNGs keep the tests fast."""
    server = StandinServer("127.0.0.1", 0, png_kind="flat").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_standin(standin):
    """Every test starts with zeroed stats and start-up knobs."""
    standin.reset()


@pytest.fixture
def bedrock(aws_env, boto_session, standin):
    """bedrock-runtime client without retries, so each call is one request."""
    return boto_session.client("bedrock-runtime", endpoint_url=standin.url, config=NO_RETRY)


@pytest.fixture
def rekognition(aws_env, boto_session, standin):
    """rekognition client without retries."""
    return boto_session.client("rekognition", endpoint_url=standin.url, config=NO_RETRY)


def titan_body(text="a lighthouse at dawn", **config) -> str:
    """A TEXT_IMAGE body with a permitted size unless overridden."""
    generation = {"numberOfImages": 1, "width": 512, "height": 512, "cfgScale": 8.0, "seed": 7}
    generation.update(config)
    return json.dumps(
        {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": text}, "imageGenerationConfig": generation}
    )


def invoke(client, body, model_id=TITAN_V2):
    """Call InvokeModel; return (parsed body, response metadata headers)."""
    response = client.invoke_model(modelId=model_id, body=body)
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


def error_of(call) -> ClientError:
    """Run ``call`` and return the ClientError it raises."""
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def png_of(b64: str) -> bytes:
    """Decode one image from the response."""
    return base64.b64decode(b64, validate=True)


def pillow_png(width, height, fmt="PNG") -> bytes:
    """A real image made by Pillow (not by the stand-in)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, fmt)
    return out.getvalue()


def check_png_structure(data: bytes, width: int, height: int) -> None:
    """Every chunk CRC is right and IDAT inflates (Adler-32 checked) to the exact scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, kinds = 8, b"", []
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert zlib.crc32(kind + payload) == crc, kind
        kinds.append(kind)
        idat += payload if kind == b"IDAT" else b""
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)


# ---------------------------------------------------------------- Bedrock: success


def test_titan_returns_n_pngs_of_the_requested_size(bedrock):
    payload, headers = invoke(bedrock, titan_body(numberOfImages=3, width=768, height=1152))
    assert payload["error"] is None
    assert len(payload["images"]) == 3
    for b64 in payload["images"]:
        image = Image.open(io.BytesIO(png_of(b64)))
        assert image.format == "PNG" and image.size == (768, 1152)
        image.load()
    assert headers["content-type"] == "application/json"
    assert headers["x-amzn-requestid"]
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0
    assert len(set(payload["images"])) == 3  # each image of one request differs


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_pngs_are_structurally_valid(standin, bedrock, kind):
    standin.configure(png_kind=kind)
    payload, _ = invoke(bedrock, titan_body(width=1173, height=640, numberOfImages=2))
    for b64 in payload["images"]:
        check_png_structure(png_of(b64), 1173, 640)


def test_noise_png_is_realistically_large(standin, bedrock):
    standin.configure(png_kind="noise")
    payload, _ = invoke(bedrock, titan_body(width=1024, height=1024))
    data = png_of(payload["images"][0])
    assert 1_000_000 < len(data) < 2_500_000  # real Titan 1024x1024 PNGs are ~1-2 MB
    assert Image.open(io.BytesIO(data)).size == (1024, 1024)


def test_seeds_change_the_image_and_a_seed_repeats(bedrock):
    first = invoke(bedrock, titan_body(seed=1))[0]["images"][0]
    again = invoke(bedrock, titan_body(seed=1))[0]["images"][0]
    other = invoke(bedrock, titan_body(seed=2))[0]["images"][0]
    assert first == again
    assert first != other


def test_adler32_combine_matches_zlib():
    head, tail = b"head" * 1000, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(head), zlib.adler32(tail), len(tail)) == zlib.adler32(head + tail)


def test_png_factory_output_matches_its_base64_pieces():
    factory = PngFactory()
    png = factory.render(512, 512, "noise", b"m", [("standin-moderation", "Weapons")])
    assert b"".join(factory.render_b64(512, 512, "noise", b"m", [("standin-moderation", "Weapons")])) == (
        base64.b64encode(png)
    )
    assert Image.open(io.BytesIO(png)).text["standin-moderation"] == "Weapons"


def test_nova_canvas_accepts_1024_characters(bedrock, standin):
    payload, _ = invoke(bedrock, titan_body(text="n" * 1024), model_id=NOVA_CANVAS)
    assert len(payload["images"]) == 1
    assert standin.stats()["invoke_calls_by_model"] == {NOVA_CANVAS: 1}


def test_model_arn_with_encoded_slash_is_one_segment(bedrock):
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN_V2}"
    payload, _ = invoke(bedrock, titan_body(), model_id=arn)
    assert len(payload["images"]) == 1


def test_sigv4_and_bearer_auth_are_accepted(aws_env, bedrock, standin):
    invoke(bedrock, titan_body())
    aws_env.setenv("AWS_BEARER_TOKEN_BEDROCK", "dummy-token")
    client = boto3.session.Session().client("bedrock-runtime", endpoint_url=standin.url, config=NO_RETRY)
    payload, _ = invoke(client, titan_body())
    assert len(payload["images"]) == 1
    assert standin.stats()["auth_schemes"] == {"sigv4": 1, "bearer": 1}


# ---------------------------------------------------------------- Bedrock: validation


def test_titan_text_over_512_is_a_schema_error(bedrock):
    error = error_of(lambda: invoke(bedrock, titan_body(text="t" * 513)))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Message"] == (
        "Malformed input request: #/textToImageParams/text: expected maxLength: 512, actual: 513, "
        "please reformat your input and try again."
    )


def _with(mutate):
    """A valid body transformed by ``mutate`` (which edits the parsed dict in place)."""
    doc = json.loads(titan_body())
    mutate(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (titan_body(text=""), "#/textToImageParams/text: expected minLength: 1"),
        (titan_body(width=1000, height=1000), "#/imageGenerationConfig: width 1000 and height 1000"),
        (titan_body(width=1024), "#/imageGenerationConfig: width 1024 and height 512"),
        (titan_body(cfgScale=11), "#/imageGenerationConfig/cfgScale: 11 is not less or equal"),
        (titan_body(cfgScale=1.0), "#/imageGenerationConfig/cfgScale: 1.0 is not greater or equal"),
        (titan_body(numberOfImages=6), "#/imageGenerationConfig/numberOfImages"),
        (titan_body(numberOfImages="2"), "expected type: Integer, found: String"),
        (titan_body(seed=2147483647), "#/imageGenerationConfig/seed"),
        (titan_body(seed=-1), "#/imageGenerationConfig/seed"),
        (titan_body(quality="ultra"), "#/imageGenerationConfig/quality: ultra is not a valid enum value"),
        (titan_body(steps=30), "#/imageGenerationConfig: extraneous key [steps] is not permitted"),
        (_with(lambda d: d.update(extra=1)), "#: extraneous key [extra] is not permitted"),
        (_with(lambda d: d["textToImageParams"].update(style="X")), "extraneous key [style]"),
        (_with(lambda d: d.update(taskType="PAINT")), "#/taskType: PAINT is not a valid enum value"),
        # INPAINTING is a task of its own, with its own params object: TEXT_IMAGE's is refused there.
        (_with(lambda d: d.update(taskType="INPAINTING")), "#: extraneous key [textToImageParams] is not permitted"),
        (_with(lambda d: d.pop("textToImageParams")), "#: required key [textToImageParams] not found"),
        (_with(lambda d: d["textToImageParams"].update(negativeText="")), "negativeText: expected minLength"),
        (_with(lambda d: d["textToImageParams"].update(controlMode="CANNY_EDGE")), "[conditionImage] not found"),
    ],
)
def test_invalid_bodies_are_validation_exceptions(bedrock, body, pointer):
    error = error_of(lambda: invoke(bedrock, body))
    assert error.response["Error"]["Code"] == "ValidationException"
    message = error.response["Error"]["Message"]
    assert message.startswith("Malformed input request: ")
    assert message.endswith(", please reformat your input and try again.")
    assert pointer in message


def test_non_json_body_gets_the_generic_malformed_message(bedrock):
    error = error_of(lambda: invoke(bedrock, b"not json"))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"] == "Malformed input request, please reformat your input and try again."


def test_omitted_size_defaults_and_nova_allows_style(bedrock):
    body = json.dumps({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "cat", "style": "PHOTOREALISM"}})
    payload, _ = invoke(bedrock, body, model_id=NOVA_CANVAS)
    assert Image.open(io.BytesIO(png_of(payload["images"][0]))).size == (1024, 1024)


# ---------------------------------------------------------------- Bedrock: content filter


def test_blocked_prompt_is_a_400_with_the_real_message(bedrock, standin):
    error = error_of(lambda: invoke(bedrock, titan_body(text="a cat [[blocked]]")))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"] == BLOCKED_PROMPT_MESSAGE
    assert standin.stats()["errors_returned"] == {"ValidationException": 1}


def test_blocked_output_is_a_200_with_error(bedrock, standin):
    payload, _ = invoke(bedrock, titan_body(text="a cat [[blocked-output]]"))
    assert payload["images"] == []
    assert "AUP or AWS Responsible AI Policy" in payload["error"]
    assert standin.stats()["blocked_outputs"] == 1


# ---------------------------------------------------------------- Bedrock: faults

FAULTS = [
    ("ThrottlingException", 429),
    ("ServiceUnavailableException", 503),
    ("InternalServerException", 500),
    ("ModelTimeoutException", 408),
    ("ModelErrorException", 424),
    ("ServiceQuotaExceededException", 400),
    ("AccessDeniedException", 403),
    ("ResourceNotFoundException", 404),
    ("ModelNotReadyException", 429),
    ("ValidationException", 400),
]


def test_fail_next_codes_parse_with_their_statuses(bedrock, standin):
    standin.configure(fail_next=[code for code, _ in FAULTS])
    for code, status in FAULTS:
        error = error_of(lambda: invoke(bedrock, titan_body()))
        assert error.response["Error"]["Code"] == code
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert error.response["Error"]["Message"]
        if code == "ModelErrorException":
            assert error.response["originalStatusCode"] == 500
            assert error.response["resourceName"].endswith(TITAN_V2)
    assert len(invoke(bedrock, titan_body())[0]["images"]) == 1  # the queue is used up
    assert standin.stats()["errors_returned"] == {code: 1 for code, _ in FAULTS}


def test_throttle_rate_one_always_throttles(bedrock, standin):
    standin.configure(throttle_rate=1)
    error = error_of(lambda: invoke(bedrock, titan_body()))
    assert error.response["Error"]["Code"] == "ThrottlingException"
    assert error.response["Error"]["Message"] == "Too many requests, please wait before trying again."
    assert isinstance(error, bedrock.exceptions.ThrottlingException)


def test_error_rate_injects_the_chosen_code(bedrock, standin):
    standin.configure(error_rate=1.0, error_code="ServiceUnavailableException")
    error = error_of(lambda: invoke(bedrock, titan_body()))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert isinstance(error, bedrock.exceptions.ServiceUnavailableException)


def test_disabled_model_is_access_denied_or_end_of_life(bedrock, standin):
    standin.configure(disabled_models=[TITAN_V2])
    error = error_of(lambda: invoke(bedrock, titan_body()))
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert error.response["Error"]["Message"] == "You don't have access to the model with the specified model ID."
    invoke(bedrock, titan_body(), model_id=NOVA_CANVAS)  # other models still work
    standin.configure(disabled_error="ResourceNotFoundException")
    error = error_of(lambda: invoke(bedrock, titan_body()))
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "end of its life" in error.response["Error"]["Message"]


def test_unknown_model_is_resource_not_found(bedrock):
    error = error_of(lambda: invoke(bedrock, titan_body(), model_id="amazon.titan-image-generator-v9:0"))
    assert error.response["Error"]["Code"] == "ResourceNotFoundException"


def test_seeded_fault_sequences_repeat(bedrock, standin):
    def sequence():
        standin.configure(seed=123, throttle_rate=0.5)
        outcomes = []
        for _ in range(12):
            try:
                invoke(bedrock, titan_body())
                outcomes.append("ok")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
        return outcomes

    first = sequence()
    assert first == sequence()
    assert {"ok", "ThrottlingException"} == set(first)


# ---------------------------------------------------------------- Bedrock: latency, stats


def test_latency_is_served_concurrently(bedrock, standin):
    standin.configure(latency=0.5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: invoke(bedrock, titan_body()), range(4)))
    assert all(len(payload["images"]) == 1 for payload, _ in results)
    assert all(int(headers["x-amzn-bedrock-invocation-latency"]) >= 500 for _, headers in results)
    stats = standin.stats()
    assert stats["max_in_flight"] == 4
    assert stats["in_flight"] == 0
    assert stats["invoke_calls"] == 4


def test_retries_are_counted_and_reset_clears_everything(aws_env, boto_session, standin):
    retrying = boto_session.client(
        "bedrock-runtime",
        endpoint_url=standin.url,
        config=Config(retries={"mode": "legacy", "total_max_attempts": 2}),
    )
    standin.configure(fail_next=["InternalServerException"], latency=0.01)
    invoke(retrying, titan_body())
    stats = standin.stats()
    assert stats["invoke_calls"] == 2
    assert stats["attempts"] == {"1": 1, "2": 1}
    assert stats["retries_seen"] == 1
    assert stats["errors_returned"] == {"InternalServerException": 1}
    assert stats["images_generated"] == 1
    standin.reset()
    stats = standin.stats()
    assert stats["invoke_calls"] == stats["max_in_flight"] == stats["images_generated"] == 0
    assert stats["attempts"] == {} and stats["errors_returned"] == {}
    assert standin.knobs()["latency"] == 0.0
    assert standin.knobs()["png_kind"] == "flat"  # start-up value survives reset


def test_control_endpoints_over_http(standin):
    def call(path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(standin.url + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    knobs = call("/_standin/config", {"latency": 0.25, "disabled_models": ["x"], "flag_all": "Weapons"})
    assert knobs["latency"] == 0.25 and knobs["disabled_models"] == ["x"] and knobs["flag_all"] == "Weapons"
    assert call("/_standin/config")["latency"] == 0.25
    assert call("/_standin/stats")["invoke_calls"] == 0
    with pytest.raises(urllib.error.HTTPError) as info:
        call("/_standin/config", {"no_such_knob": 1})
    assert info.value.code == 400
    assert call("/_standin/reset", {}) == {"ok": True}
    assert call("/_standin/config")["latency"] == 0.0


def test_configure_rejects_bad_values(standin):
    with pytest.raises(ValueError):
        standin.configure(throttle_rate=2)
    with pytest.raises(ValueError):
        standin.configure(fail_next=["NoSuchException"])


# ---------------------------------------------------------------- Rekognition


def generated_png(bedrock, text="a quiet harbour") -> bytes:
    """One stand-in PNG (512x512) for the given prompt."""
    return png_of(invoke(bedrock, titan_body(text=text))[0]["images"][0])


def test_clean_image_has_no_labels(bedrock, rekognition, standin):
    response = rekognition.detect_moderation_labels(Image={"Bytes": generated_png(bedrock)})
    assert response["ModerationLabels"] == []
    assert response["ModerationModelVersion"] == "7.0"
    assert response["ContentTypes"] == []
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"
    assert standin.stats()["rekognition_calls"] == 1


def test_flag_marker_returns_the_full_chain(bedrock, rekognition, standin):
    png = generated_png(bedrock, "beach [[flag:Exposed Female Nipple]]")
    labels = rekognition.detect_moderation_labels(Image={"Bytes": png})["ModerationLabels"]
    assert [(label["Name"], label["ParentName"], label["TaxonomyLevel"]) for label in labels] == [
        ("Exposed Female Nipple", "Explicit Nudity", 3),
        ("Explicit Nudity", "Explicit", 2),
        ("Explicit", "", 1),
    ]
    assert all(label["Confidence"] == 97.5 for label in labels)
    assert standin.stats()["rekognition_flagged"] == 1


def test_level2_flag_and_min_confidence(bedrock, rekognition):
    png = generated_png(bedrock, "[[flag:Graphic Violence]] in a film")
    labels = rekognition.detect_moderation_labels(Image={"Bytes": png})["ModerationLabels"]
    assert [(label["Name"], label["ParentName"]) for label in labels] == [
        ("Graphic Violence", "Violence"),
        ("Violence", ""),
    ]
    strict = rekognition.detect_moderation_labels(Image={"Bytes": png}, MinConfidence=99)
    assert strict["ModerationLabels"] == []


def test_flag_all_flags_any_image_including_jpeg(rekognition, standin):
    standin.configure(flag_all="Smoking")
    response = rekognition.detect_moderation_labels(Image={"Bytes": pillow_png(100, 100, "JPEG")})
    assert [label["Name"] for label in response["ModerationLabels"]] == [
        "Smoking",
        "Drugs & Tobacco Paraphernalia & Use",
        "Drugs & Tobacco",
    ]


@pytest.mark.parametrize(
    ("image", "code"),
    [
        ({"Bytes": b"this is not an image"}, "InvalidImageFormatException"),
        ({"Bytes": pillow_png(50, 50)}, "InvalidImageFormatException"),
        (
            {"Bytes": b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBBI", 13, b"IHDR", 20000, 100, 8, 2, 0, 0, 0, 0)},
            "ImageTooLargeException",
        ),
        ({"Bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * 5_300_000}, "ValidationException"),
        ({"S3Object": {"Bucket": "bucket", "Name": "key.png"}}, "InvalidS3ObjectException"),
    ],
)
def test_bad_images_are_rejected_with_body_type_codes(rekognition, image, code):
    error = error_of(lambda: rekognition.detect_moderation_labels(Image=image))
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_invalid_image_format_is_the_modelled_exception(rekognition):
    error = error_of(lambda: rekognition.detect_moderation_labels(Image={"Bytes": b"GIF89a..."}))
    assert isinstance(error, rekognition.exceptions.InvalidImageFormatException)
    assert error.response["Error"]["Message"] == "Request has invalid image format"


def test_min_confidence_out_of_range(rekognition):
    image = {"Bytes": pillow_png(100, 100)}
    error = error_of(lambda: rekognition.detect_moderation_labels(Image=image, MinConfidence=150))
    assert error.response["Error"]["Code"] == "InvalidParameterException"


@pytest.mark.parametrize(
    ("knobs", "code"),
    [({"rekognition_down": True}, "InternalServerError"), ({"rekognition_throttle_rate": 1}, "ThrottlingException")],
)
def test_rekognition_outage_and_throttling_are_500s(rekognition, standin, knobs, code):
    standin.configure(**knobs)
    error = error_of(lambda: rekognition.detect_moderation_labels(Image={"Bytes": pillow_png(100, 100)}))
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert standin.stats()["rekognition_errors_returned"] == {code: 1}


# ---------------------------------------------------------------- CLI


def test_cli_prints_ready_and_serves(aws_env):
    process = subprocess.Popen(
        [sys.executable, "-m", "standins.aws_standin", "--port", "0", "--png-kind", "flat", "--latency", "0.05"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(15, process.kill)  # never hang the suite on a broken start-up
    watchdog.start()
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        aws_env.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        client = boto3.session.Session().client("bedrock-runtime", config=NO_RETRY)  # endpoint from env
        payload, _ = invoke(client, titan_body())
        assert Image.open(io.BytesIO(png_of(payload["images"][0]))).size == (512, 512)
        with urllib.request.urlopen(url + "/_standin/stats", timeout=5) as response:
            assert json.load(response)["invoke_calls"] == 1
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)
        watchdog.cancel()
    assert returncode == 0
