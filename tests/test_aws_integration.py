"""The whole service in AWS mode over real HTTP: Bedrock and Rekognition stand-in, moto's S3 server.

Every test checks what landed in the bucket, not only the answer.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
import requests
from PIL import Image, ImageStat

from generation.png import png_size
from tests.servers import REPO

pytestmark = pytest.mark.integration

pytest_plugins = ["tests.aws_fixtures"]

TITAN = "amazon.titan-image-generator-v2:0"
NOVA = "amazon.nova-canvas-v1:0"
FLAG_PROMPT = "a beach at noon [[flag:Explicit Nudity]]"


def body(**fields) -> dict:
    """A valid /generate_images body at a small size; keyword arguments replace or add fields."""
    return {"prompt": "a red porsche on a mountain road", "output_folder": "000/111",
            "file_name_prefix": "porsche_image", "width": 512, "height": 512, "quality": "standard", **fields}


def all_keys(s3, bucket, prefix="") -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def keys_in(s3, bucket, prefix="") -> list[str]:
    """The image keys only: request records and other bookkeeping live under hidden (dot) folders."""
    return [key for key in all_keys(s3, bucket, prefix) if "/." not in "/" + key]


def read(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def variance(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        return sum(ImageStat.Stat(image.convert("RGB")).var) / 3


def post(made, **fields):
    return made.client.post("/generate_images", json=body(**fields))


class SequenceClock:
    """Key timestamps from a list, so a test knows the next key before the request."""

    def __init__(self, stamps):
        self.stamps = list(stamps)

    def next(self) -> str:
        return self.stamps.pop(0)


# --- the contract ----------------------------------------------------------------------------------


def test_generate_images_stores_four_screened_pngs_with_metadata(aws_app, s3, bucket, standin):
    response = post(aws_app())
    assert response.status_code == 200
    manifest = response.get_json()
    assert len(manifest["images"]) == 4 and len(set(manifest["images"])) == 4
    assert manifest["model_id"] == TITAN and manifest["errors"] == [] and "placeholder" not in manifest
    assert keys_in(s3, bucket) == sorted(manifest["images"])
    for detail in manifest["image_details"]:
        assert detail["key"].startswith("000/111/porsche_image-") and detail["key"].endswith(".png")
        stored = s3.get_object(Bucket=bucket, Key=detail["key"])
        assert png_size(stored["Body"].read()) == (512, 512)
        assert stored["ContentType"] == "image/png"
        assert stored["Metadata"] == {"request-id": manifest["request_id"], "seed": str(detail["seed"]),
                                      "model-id": TITAN}
        assert detail["moderation"] == {"verdict": "clean", "labels": [], "action": "none"}
        assert detail["s3_uri"] == f"s3://{bucket}/{detail['key']}"
        fetched = requests.get(detail["url"], timeout=10)  # the presigned URL a UI would show
        assert fetched.status_code == 200 and fetched.content == read(s3, bucket, detail["key"])
        assert "X-Amz-Expires=900" in detail["url"]
    stats = standin.stats()
    assert stats["invoke_calls"] == 4 and stats["rekognition_calls"] == 4


def test_generate_images_calls_the_model_four_times_side_by_side(aws_app, standin):
    made = aws_app()
    standin.configure(latency=0.5)
    assert post(made).status_code == 200
    assert standin.stats()["max_in_flight"] == 4  # all four calls were waiting on the model at once


def test_presigned_urls_can_be_turned_off(aws_app):
    manifest = post(aws_app(AIG_S3_URL_SECONDS="0"), count=1).get_json()
    assert "url" not in manifest["image_details"][0] and manifest["image_details"][0]["s3_uri"]


def test_generate_images_writes_under_the_configured_key_prefix(aws_app, s3, bucket):
    manifest = post(aws_app(AIG_S3_KEY_PREFIX="tenant-a"), count=2).get_json()
    assert keys_in(s3, bucket) == sorted("tenant-a/" + key for key in manifest["images"])
    assert {d["s3_uri"] for d in manifest["image_details"]} == {f"s3://{bucket}/tenant-a/{k}"
                                                               for k in manifest["images"]}


def test_readyz_is_ready_against_moto_and_the_stand_in(aws_app):
    response = aws_app().client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["model_id"] == TITAN


def test_readyz_is_not_ready_without_the_bucket(aws_app, caplog):
    response = aws_app(AIG_S3_BUCKET="no-such-bucket-here").client.get("/readyz")
    assert response.status_code == 503 and "store" in response.get_json()["detail"]
    assert "no-such-bucket-here" not in response.get_data(as_text=True)  # names stay in the log
    assert any("NoSuchBucket" in record.getMessage() for record in caplog.records)


# --- models ----------------------------------------------------------------------------------------


def test_nova_canvas_accepts_a_1024_character_prompt(aws_app, standin):
    response = post(aws_app(AIG_BEDROCK_MODEL_ID=NOVA), prompt="p" * 1024, count=1)
    assert response.status_code == 200 and response.get_json()["model_id"] == NOVA
    assert standin.stats()["invoke_calls_by_model"] == {NOVA: 1}


def test_titan_rejects_a_513_character_prompt_before_any_model_call(aws_app, standin, s3, bucket):
    response = post(aws_app(), prompt="p" * 513)
    assert response.status_code == 400
    assert [e["field"] for e in response.get_json()["errors"]] == ["prompt"]
    assert standin.stats()["invoke_calls"] == 0 and keys_in(s3, bucket) == []


# --- Bedrock errors --------------------------------------------------------------------------------


def test_throttling_then_success_is_retried_and_succeeds(aws_app, standin):
    made = aws_app()
    standin.configure(fail_next=["ThrottlingException"])
    response = post(made)
    assert response.status_code == 200 and len(response.get_json()["images"]) == 4
    assert standin.stats()["invoke_calls"] == 5


def test_endless_throttling_answers_429_with_retry_after(aws_app, standin, s3, bucket):
    made = aws_app(AIG_BEDROCK_MAX_ATTEMPTS="2")
    standin.configure(throttle_rate=1.0)
    response = post(made)
    assert response.status_code == 429 and response.get_json()["code"] == "model_throttled"
    assert int(response.headers["Retry-After"]) >= 1
    assert standin.stats()["invoke_calls"] == 8 and keys_in(s3, bucket) == []


@pytest.mark.parametrize("marker", ["[[blocked]]", "[[blocked-output]]"])
def test_content_filter_answers_400_naming_the_filter(aws_app, s3, bucket, marker):
    response = post(aws_app(), prompt=f"a red porsche {marker}")
    assert response.status_code == 400
    problem = response.get_json()
    assert problem["code"] == "content_filtered" and "content filter" in problem["detail"]
    assert keys_in(s3, bucket) == []


@pytest.mark.parametrize("refusal", ["AccessDeniedException", "ResourceNotFoundException"])
def test_refused_model_answers_503_telling_the_operator_what_to_set(aws_app, standin, refusal):
    made = aws_app(AIG_BEDROCK_FALLBACK_MODEL_IDS="")  # no fallback: the refusal is the answer
    standin.configure(disabled_models=[TITAN], disabled_error=refusal)
    response = post(made)
    assert response.status_code == 503
    problem = response.get_json()
    assert problem["code"] == "model_unavailable" and "AIG_BEDROCK_MODEL_ID" in problem["detail"]


@pytest.mark.parametrize(("code", "status", "problem_code"), [
    ("ModelTimeoutException", 504, "model_timeout"),
    ("InternalServerException", 502, "model_failed"),
    ("ModelErrorException", 502, "model_failed"),
    ("ServiceUnavailableException", 503, "model_busy"),
])
def test_every_image_failing_answers_the_status_of_the_cause(aws_app, standin, s3, bucket, code, status,
                                                             problem_code):
    made = aws_app()
    standin.configure(fail_next=[code] * 4)
    response = post(made)
    assert response.status_code == status and response.get_json()["code"] == problem_code
    assert "images" not in response.get_json() and keys_in(s3, bucket) == []


def test_read_timeout_answers_504_and_never_resends(aws_app, standin, s3, bucket):
    made = aws_app(AIG_BEDROCK_READ_TIMEOUT_SECONDS="1")
    standin.configure(latency=1.5)
    response = post(made)
    assert response.status_code == 504 and response.get_json()["code"] == "model_timeout"
    stats = standin.stats()
    assert stats["invoke_calls"] == 4 and stats["attempts"] == {"1": 4}
    assert keys_in(s3, bucket) == []


def test_one_failed_image_among_four_still_answers_200(aws_app, standin, s3, bucket):
    made = aws_app()
    standin.configure(fail_next=["InternalServerException"])
    manifest = post(made).get_json()
    assert len(manifest["images"]) == 3
    assert [(e["status"], e["code"]) for e in manifest["errors"]] == [(502, "model_failed")]
    assert keys_in(s3, bucket) == sorted(manifest["images"])


# --- S3 --------------------------------------------------------------------------------------------


def test_an_existing_object_is_never_overwritten(aws_app, s3, bucket):
    made = aws_app()
    taken = "000/111/porsche_image-1700000000.000001.png"
    s3.put_object(Bucket=bucket, Key=taken, Body=b"precious")
    made.services.pipeline.clock = SequenceClock(["1700000000.000001", "1700000000.000002"])
    manifest = post(made, count=1).get_json()
    assert manifest["images"] == ["000/111/porsche_image-1700000000.000002.png"]
    assert read(s3, bucket, taken) == b"precious"
    assert png_size(read(s3, bucket, manifest["images"][0])) == (512, 512)


def test_a_missing_bucket_answers_an_error_and_reports_no_key(aws_app):
    response = post(aws_app(AIG_S3_BUCKET="no-such-bucket-here"))
    assert response.status_code == 503
    problem = response.get_json()
    assert problem["code"] == "store_failed" and "images" not in problem


def test_a_bucket_lost_during_generation_answers_an_error_and_reports_no_key(aws_app, standin, s3, bucket):
    made = aws_app()
    standin.configure(latency=1.0)
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(response=post(made)))
    worker.start()
    give_up = time.monotonic() + 5
    while standin.stats()["in_flight"] < 4 and time.monotonic() < give_up:
        time.sleep(0.02)
    for key in all_keys(s3, bucket):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    worker.join()
    response = answer["response"]
    assert response.status_code == 503
    problem = response.get_json()
    assert problem["code"] == "store_failed" and "NoSuchBucket" in problem["detail"]
    assert "images" not in problem and standin.stats()["invoke_calls"] == 4


# --- screening -------------------------------------------------------------------------------------


def test_flagged_images_are_published_blurred_and_the_originals_quarantined(aws_app, standin, s3, bucket):
    made = aws_app()
    standin.configure(png_kind="noise")
    manifest = post(made, prompt=FLAG_PROMPT).get_json()
    assert len(manifest["images"]) == 4
    for detail in manifest["image_details"]:
        moderation = detail["moderation"]
        assert moderation["verdict"] == "flagged" and moderation["action"] == "blurred"
        assert {"name": "Explicit Nudity", "parent": "Explicit", "confidence": 97.5} in moderation["labels"]
        published = read(s3, bucket, detail["key"])
        assert png_size(published) == (512, 512) and variance(published) < 50
    originals = keys_in(s3, bucket, "quarantine/")
    assert len(originals) == 4 and not set(originals) & set(manifest["images"])
    for key in originals:
        original = read(s3, bucket, key)
        assert b"standin-moderation" in original and variance(original) > 1000
    assert sorted(keys_in(s3, bucket)) == sorted(originals + manifest["images"])


def test_withheld_flagged_originals_are_not_stored(aws_app, s3, bucket):
    manifest = post(aws_app(AIG_FLAGGED_ACTION="withhold"), prompt=FLAG_PROMPT).get_json()
    assert {d["moderation"]["action"] for d in manifest["image_details"]} == {"blurred_withheld"}
    assert keys_in(s3, bucket, "quarantine/") == []
    for key in manifest["images"]:
        assert b"standin-moderation" not in read(s3, bucket, key)


def test_labels_below_min_confidence_leave_the_image_clean(aws_app, s3, bucket):
    manifest = post(aws_app(AIG_MODERATION_MIN_CONFIDENCE="99"), prompt=FLAG_PROMPT, count=1).get_json()
    assert manifest["image_details"][0]["moderation"]["verdict"] == "clean"
    assert keys_in(s3, bucket) == manifest["images"]


def test_screening_down_publishes_nothing(aws_app, standin, s3, bucket):
    made = aws_app()
    standin.configure(rekognition_down=True)
    response = post(made)
    assert response.status_code == 503 and response.get_json()["code"] == "screening_failed"
    assert keys_in(s3, bucket) == []


def test_one_unscreenable_image_is_left_out(aws_app, standin, s3, bucket):
    made = aws_app()
    standin.configure(rekognition_fail_next=["InvalidImageFormatException"])
    manifest = post(made).get_json()
    assert len(manifest["images"]) == 3
    assert [e["code"] for e in manifest["errors"]] == ["screening_failed"]
    assert keys_in(s3, bucket) == sorted(manifest["images"])


def test_one_tagged_record_per_request_and_a_lifecycle_rule_that_expires_it(aws_app, standin, s3, bucket):
    made = aws_app()
    manifest = post(made).get_json()
    records = [key for key in all_keys(s3, bucket) if "/.requests/" in key]
    assert records == [manifest["record"]]  # the started record went once the final one was in
    tags = s3.get_object_tagging(Bucket=bucket, Key=manifest["record"])["TagSet"]
    assert tags == [{"Key": "aig-kind", "Value": "request-record"}]
    for key in manifest["images"]:
        assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []  # images are kept
    rules = json.loads((REPO / "deploy" / "s3" / "lifecycle.json").read_text())
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    by_tag = {r["Filter"]["Tag"]["Value"]: r["Expiration"]["Days"]
              for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert by_tag == {"request-record": made.settings.record_retention_days, "idempotency": 2,
                      "job-request": made.settings.job_retention_days}
