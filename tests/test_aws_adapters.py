"""The AWS adapters through boto3 over real HTTP: moto's S3 server and the Bedrock/Rekognition stand-in."""

from __future__ import annotations

import io
import os
import socket
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from PIL import Image

from backends import aws_clients
from backends.bedrock_bodies import request_body
from backends.bedrock_model import BedrockModel
from backends.rekognition_screener import MAX_INLINE_BYTES, RekognitionScreener
from backends.s3_store import S3Store, encryption_args
from generation.errors import (
    ContentFiltered,
    InvalidRequest,
    KeyExists,
    ModelBusy,
    ModelFailed,
    ModelThrottled,
    ModelTimeout,
    ModelUnavailable,
    ScreeningFailed,
    StoreFailed,
)
from generation.model_registry import TITAN_V2
from generation.png import png_size
from image_generation import ImageSpec, ModerationLabel
from settings import Settings, SettingsError
from web.problems import status_of

pytestmark = pytest.mark.integration

pytest_plugins = ["tests.aws_fixtures"]

TITAN = "amazon.titan-image-generator-v2:0"
NOVA = "amazon.nova-canvas-v1:0"


def spec(prompt="a red porsche", width=512, height=512, seed=7, negative=None) -> ImageSpec:
    return ImageSpec(prompt, negative, width, height, "standard", 8.0, seed)


def aws_settings(bucket="unused-bucket", **overrides) -> Settings:
    return Settings.from_env({}, model="bedrock", store="s3", moderation="rekognition", s3_bucket=bucket,
                             **overrides)


def model(**overrides) -> BedrockModel:
    built = BedrockModel.from_settings(aws_settings(**overrides))
    built._sleep = lambda seconds: None  # back-off waits are not what these tests measure
    return built


def far_deadline() -> float:
    return time.monotonic() + 90


def stand_in_png(standin, prompt: str) -> bytes:
    """A PNG made by the stand-in for `prompt` (it marks [[flag:...]] prompts for its Rekognition)."""
    return model().generate(spec(prompt), far_deadline())


# --- clients ---------------------------------------------------------------------------------------


def test_aws_clients_bedrock_client_never_retries_and_waits_the_read_timeout(aws_env):
    client = aws_clients.bedrock_runtime_client(aws_settings(bedrock_read_timeout_seconds=42.0,
                                                             model_concurrency=64))
    config = client.meta.config
    assert config.read_timeout == 42.0 and config.connect_timeout == 5
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.max_pool_connections == 64


def test_aws_clients_s3_and_rekognition_sign_v4_with_bounded_retries(aws_env):
    settings = aws_settings(model_concurrency=32)
    s3_config = aws_clients.s3_client(settings).meta.config
    assert s3_config.signature_version == "s3v4"
    assert s3_config.retries["total_max_attempts"] <= 3 and s3_config.max_pool_connections == 32
    rekognition_config = aws_clients.rekognition_client(settings).meta.config
    assert rekognition_config.retries["mode"] == "standard" and rekognition_config.max_pool_connections == 32


def test_aws_clients_honour_aws_region_and_endpoint_env(aws_env, monkeypatch, standin):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    aws_clients.reset_session()
    client = aws_clients.bedrock_runtime_client(aws_settings())
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == standin.url


def test_aws_clients_refuse_to_start_without_a_region(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    aws_clients.reset_session()
    with pytest.raises(SettingsError, match="AWS_REGION"):
        aws_clients.s3_client(aws_settings())


# --- S3 --------------------------------------------------------------------------------------------


def test_moto_s3_server_refuses_a_second_conditional_put(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a/x.png", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="a/x.png", Body=b"second", IfNoneMatch="*")
    assert raised.value.response["Error"]["Code"] == "PreconditionFailed"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="a/x.png")["Body"].read() == b"first"


def test_s3_store_puts_png_with_type_metadata_and_prefix(s3, bucket):
    store = S3Store.from_settings(aws_settings(bucket, s3_key_prefix="tenant-a/", s3_sse="aes256"))
    store.put_new("000/img.png", b"\x89PNG fake", {"request-id": "r1", "seed": "7", "model-id": TITAN})
    stored = s3.get_object(Bucket=bucket, Key="tenant-a/000/img.png")
    assert stored["Body"].read() == b"\x89PNG fake"
    assert stored["ContentType"] == "image/png"
    assert stored["Metadata"] == {"request-id": "r1", "seed": "7", "model-id": TITAN}
    assert stored["ServerSideEncryption"] == "AES256"
    assert store.get("000/img.png") == b"\x89PNG fake"
    assert "X-Amz-Signature=" in store.presigned_url("000/img.png", 60)


def test_s3_store_raises_key_exists_and_keeps_the_original(s3, bucket):
    store = S3Store.from_settings(aws_settings(bucket))
    store.put_new("k.png", b"original", {})
    with pytest.raises(KeyExists):
        store.put_new("k.png", b"intruder", {})
    assert s3.get_object(Bucket=bucket, Key="k.png")["Body"].read() == b"original"


def test_s3_store_gets_stores_other_types_and_deletes(s3, bucket):
    store = S3Store.from_settings(aws_settings(bucket, s3_key_prefix="tenant-a/"))
    store.put_new(".requests/r1.json", b"{}", {"request-id": "r1"}, content_type="application/json")
    assert s3.head_object(Bucket=bucket, Key="tenant-a/.requests/r1.json")["ContentType"] == "application/json"
    assert store.get(".requests/r1.json") == b"{}" and store.get(".requests/none.json") is None
    store.delete(".requests/r1.json")
    store.delete(".requests/r1.json")
    assert store.get(".requests/r1.json") is None


def test_s3_store_missing_bucket_fails_put_and_check(aws_env):
    store = S3Store.from_settings(aws_settings("no-such-bucket-here"))
    with pytest.raises(StoreFailed, match="NoSuchBucket"):
        store.put_new("k.png", b"x", {})
    with pytest.raises(StoreFailed, match="NoSuchBucket"):
        store.check()


def test_s3_store_check_passes_on_an_existing_bucket(bucket):
    S3Store.from_settings(aws_settings(bucket, s3_key_prefix="tenant-a/")).check()


def test_s3_store_retries_a_conditional_conflict_then_stores(aws_env):
    client = boto3.client("s3")
    store = S3Store(client, "some-bucket", sleep=lambda seconds: None)
    with Stubber(client) as stub:
        stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
        stub.add_response("put_object", {})
        store.put_new("k.png", b"x", {})
        stub.assert_no_pending_responses()


def test_s3_store_gives_up_on_endless_conflicts(aws_env):
    client = boto3.client("s3")
    store = S3Store(client, "some-bucket", sleep=lambda seconds: None)
    with Stubber(client) as stub:
        for _ in range(4):
            stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
        with pytest.raises(StoreFailed, match="ConditionalRequestConflict"):
            store.put_new("k.png", b"x", {})


def test_s3_store_maps_sse_settings_to_put_arguments():
    assert encryption_args("", "") == {}
    assert encryption_args("aes256", "") == {"ServerSideEncryption": "AES256"}
    assert encryption_args("aws:kms", "alias/images") == {"ServerSideEncryption": "aws:kms",
                                                          "SSEKMSKeyId": "alias/images"}


# --- Bedrock ---------------------------------------------------------------------------------------


def test_bedrock_request_body_asks_for_one_image_with_the_seed():
    sent = request_body(spec(seed=1234, negative="blurry"), TITAN_V2)
    assert sent == {"taskType": "TEXT_IMAGE",
                    "textToImageParams": {"text": "a red porsche", "negativeText": "blurry"},
                    "imageGenerationConfig": {"numberOfImages": 1, "width": 512, "height": 512,
                                              "quality": "standard", "cfgScale": 8.0, "seed": 1234}}
    assert "negativeText" not in request_body(spec(), TITAN_V2)["textToImageParams"]


@pytest.mark.parametrize("model_id", [TITAN, NOVA])
def test_bedrock_model_returns_one_png_of_the_asked_size(aws_env, standin, model_id):
    png = model(bedrock_model_id=model_id).generate(spec(width=1152, height=768), far_deadline())
    assert png_size(png) == (1152, 768)
    assert standin.stats()["invoke_calls_by_model"] == {model_id: 1}


def test_bedrock_model_retries_throttling_then_succeeds(aws_env, standin):
    standin.configure(fail_next=["ThrottlingException", "ModelNotReadyException"])
    assert png_size(model().generate(spec(), far_deadline())) == (512, 512)
    assert standin.stats()["invoke_calls"] == 3


def test_bedrock_model_gives_up_throttled_after_max_attempts(aws_env, standin):
    standin.configure(throttle_rate=1.0)
    with pytest.raises(ModelThrottled) as raised:
        model(bedrock_max_attempts=3).generate(spec(), far_deadline())
    assert raised.value.retry_after >= 1
    assert standin.stats()["invoke_calls"] == 3


def test_bedrock_model_starts_no_retry_that_could_outlast_the_deadline(aws_env, standin):
    standin.configure(throttle_rate=1.0)
    with pytest.raises(ModelThrottled):
        # 60 s left, but a retry may need the whole 70 s read time-out.
        model().generate(spec(), time.monotonic() + 60)
    assert standin.stats()["invoke_calls"] == 1


def test_bedrock_model_read_timeout_is_not_resent(aws_env, standin):
    standin.configure(latency=1.5)
    with pytest.raises(ModelTimeout, match="not repeated"):
        model(bedrock_read_timeout_seconds=1.0).generate(spec(), far_deadline())
    assert standin.stats()["invoke_calls"] == 1


@pytest.mark.parametrize(("code", "kind", "status"), [
    ("ModelTimeoutException", ModelTimeout, 504),
    ("ServiceUnavailableException", ModelBusy, 503),
    ("InternalServerException", ModelFailed, 502),
    ("ModelErrorException", ModelFailed, 502),
    ("AccessDeniedException", ModelUnavailable, 503),
    ("ResourceNotFoundException", ModelUnavailable, 503),
    ("ValidationException", InvalidRequest, 400),
])
def test_bedrock_model_translates_each_error(aws_env, standin, code, kind, status):
    standin.configure(fail_next=[code])
    with pytest.raises(kind) as raised:
        model().generate(spec(), far_deadline())
    assert status_of(raised.value.code) == status
    assert standin.stats()["invoke_calls"] == 1


def test_bedrock_model_service_quota_is_throttling(aws_env, standin):
    standin.configure(fail_next=["ServiceQuotaExceededException"])
    assert png_size(model().generate(spec(), far_deadline())) == (512, 512)


def test_bedrock_model_unavailable_tells_the_operator_what_to_set(aws_env, standin):
    standin.configure(disabled_models=[TITAN], disabled_error="ResourceNotFoundException")
    with pytest.raises(ModelUnavailable) as raised:
        model().generate(spec(), far_deadline())
    assert "end of life on 2026-06-30" in raised.value.detail and "AIG_BEDROCK_MODEL_ID" in raised.value.detail
    assert "end of its life" in raised.value.detail


@pytest.mark.parametrize("marker", ["[[blocked]]", "[[blocked-output]]"])
def test_bedrock_model_content_filter_is_content_filtered(aws_env, standin, marker):
    with pytest.raises(ContentFiltered, match="content filter"):
        model().generate(spec(f"a red porsche {marker}"), far_deadline())


def test_bedrock_model_unreachable_endpoint_is_busy(aws_env, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", dead)
    aws_clients.reset_session()
    unreachable = model()
    with pytest.raises(ModelBusy):
        unreachable.generate(spec(), far_deadline())
    with pytest.raises(ModelBusy):
        unreachable.check()


def test_bedrock_model_check_passes_when_the_endpoint_answers(aws_env):
    model().check()


# --- Rekognition -----------------------------------------------------------------------------------


def screener(**overrides) -> RekognitionScreener:
    return RekognitionScreener.from_settings(aws_settings(**overrides))


def test_rekognition_screener_passes_a_clean_image(aws_env, standin):
    verdict = screener().screen(stand_in_png(standin, "a red porsche"))
    assert verdict.verdict == "clean" and verdict.labels == ()
    assert standin.stats()["rekognition_calls"] == 1


def test_rekognition_screener_flags_with_the_label_chain(aws_env, standin):
    verdict = screener().screen(stand_in_png(standin, "a beach [[flag:Exposed Buttocks or Anus]]"))
    assert verdict.verdict == "flagged"
    assert verdict.labels == (ModerationLabel("Exposed Buttocks or Anus", "Explicit Nudity", 97.5),
                              ModerationLabel("Explicit Nudity", "Explicit", 97.5),
                              ModerationLabel("Explicit", "", 97.5))


def test_rekognition_screener_sends_min_confidence(aws_env, standin):
    png = stand_in_png(standin, "a beach [[flag:Explicit Nudity]]")
    assert screener(moderation_min_confidence=99.0).screen(png).verdict == "clean"


@pytest.mark.parametrize("knobs", [{"rekognition_down": True}, {"rekognition_throttle_rate": 1.0},
                                   {"rekognition_fail_next": ["InvalidImageFormatException"]}])
def test_rekognition_screener_fails_closed(aws_env, standin, knobs):
    png = stand_in_png(standin, "a red porsche")
    standin.configure(**knobs)
    with pytest.raises(ScreeningFailed):
        screener().screen(png)


def test_rekognition_screener_sends_a_jpeg_copy_of_an_image_over_5_mib(aws_env, standin):
    noise = Image.frombytes("RGB", (1408, 1408), os.urandom(1408 * 1408 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    assert out.tell() > MAX_INLINE_BYTES
    assert screener().screen(out.getvalue()).verdict == "clean"
    assert standin.stats()["rekognition_errors_returned"] == {}


def test_rekognition_prebuilt_body_is_what_botocore_would_send():
    import base64
    import json

    from backends.rekognition_screener import request_body as screening_body

    png = bytes(range(256)) * 10
    assert json.loads(screening_body(png, 62.5)) == {"Image": {"Bytes": base64.b64encode(png).decode()},
                                                     "MinConfidence": 62.5}


def test_rekognition_screens_each_threads_own_image_side_by_side(aws_env, standin):
    from concurrent.futures import ThreadPoolExecutor

    screener = RekognitionScreener.from_settings(aws_settings())
    clean = stand_in_png(standin, "a quiet lake")
    flagged = stand_in_png(standin, "a quiet lake [[flag:Graphic Violence]]")
    images = [clean, flagged] * 6
    with ThreadPoolExecutor(max_workers=12) as pool:
        verdicts = list(pool.map(screener.screen, images))
    assert [v.verdict for v in verdicts] == ["clean", "flagged"] * 6
    assert standin.stats()["rekognition_calls"] == 12
