"""The HTTP layer through Flask's test client, in offline mode."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from PIL import Image

from settings import Settings

pytestmark = pytest.mark.unit

CURL_BODY = '{"prompt": "red porsche", "output_folder": "000/111", "file_name_prefix": "porsche_image"}'
FORM = "application/x-www-form-urlencoded"


def files_under(folder) -> list[str]:
    """Every file under `folder`, request records included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def images_under(folder) -> list[str]:
    """The published images under `folder`: no hidden record files."""
    return [f for f in files_under(folder) if "/." not in "/" + f]


def test_generate_images_answers_the_original_curl_line(client, data_dir):
    response = client.post("/generate_images", data=CURL_BODY, content_type=FORM)
    assert response.status_code == 200
    manifest = response.get_json()
    assert len(manifest["images"]) == 4 and len(set(manifest["images"])) == 4
    for key in manifest["images"]:
        assert key.startswith("000/111/porsche_image-") and key.endswith(".png")
        epoch = key.removeprefix("000/111/porsche_image-").removesuffix(".png")
        assert float(epoch) > 1.7e9
        with Image.open(data_dir / key) as image:
            assert image.format == "PNG" and image.size == (1024, 1024)
    assert images_under(data_dir) == sorted(manifest["images"])
    record = json.loads((data_dir / manifest["record"]).read_text())
    assert record["status"] == "complete" and record["parameters"]["prompt"] == "red porsche"
    assert [i["key"] for i in record["images"]] == manifest["images"]
    # One record per request once it ends: the started record is gone.
    assert [p.name for p in (data_dir / "000/111/.requests").iterdir()] == [manifest["record"].rsplit("/", 1)[1]]


def test_generate_images_says_the_pictures_are_placeholders(client):
    manifest = client.post("/generate_images", json={**json.loads(CURL_BODY), "count": 2}).get_json()
    assert manifest["placeholder"] is True and "placeholder" in manifest["notice"]
    assert manifest["model_id"] == "placeholder"
    for detail in manifest["image_details"]:
        assert detail["placeholder"] is True
        assert (detail["width"], detail["height"]) == (1024, 1024)
        assert detail["moderation"]["verdict"] == "not_screened"
        assert detail["url"].split("?")[0].endswith("/images/" + detail["key"])
        assert "signature=" in detail["url"]  # signed, so an <img src> opens it even with API keys on


def test_generate_images_reports_seeds_that_reproduce_the_image(client, data_dir):
    first = client.post("/generate_images", json={**json.loads(CURL_BODY), "count": 1, "width": 512,
                                                  "height": 512}).get_json()
    seed = first["image_details"][0]["seed"]
    again = client.post("/generate_images", json={**json.loads(CURL_BODY), "count": 1, "seed": seed,
                                                  "width": 512, "height": 512}).get_json()
    assert again["image_details"][0]["seed"] == seed
    assert (data_dir / first["images"][0]).read_bytes() == (data_dir / again["images"][0]).read_bytes()


def test_generate_images_returns_the_request_id(client):
    response = client.post("/generate_images", data=CURL_BODY, headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.get_json()["request_id"] == "abc-123"


def test_a_hostile_request_id_is_replaced(client):
    for hostile in ("<script>alert(1)</script>", "x" * 300, "a b"):
        returned = client.get("/", headers={"X-Request-ID": hostile}).headers["X-Request-ID"]
        assert returned and returned != hostile and len(returned) == 32


@pytest.mark.parametrize("body, field", [
    ("not json", "body"),
    ("[1, 2]", "body"),
    ('{"prompt": "x", "output_folder": "../../etc", "file_name_prefix": "p"}', "output_folder"),
    ('{"prompt": "x", "output_folder": "/abs", "file_name_prefix": "p"}', "output_folder"),
    ('{"prompt": "x", "output_folder": "a", "file_name_prefix": "../p"}', "file_name_prefix"),
    ('{"output_folder": "a", "file_name_prefix": "p"}', "prompt"),
    ('{"prompt": "x", "output_folder": "a", "file_name_prefix": "p", "count": 9}', "count"),
])
def test_generate_images_rejects_bad_bodies_as_json_naming_the_field(client, data_dir, body, field):
    response = client.post("/generate_images", data=body, content_type=FORM)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 400 and problem["request_id"] == response.headers["X-Request-ID"]
    assert field in {e["field"] for e in problem["errors"]}
    assert files_under(data_dir) == []


def test_an_oversized_body_gets_a_json_413(make_app, data_dir):
    client = make_app(max_body_bytes=2048).test_client()
    body = json.dumps({**json.loads(CURL_BODY), "prompt": "x" * 4000})
    response = client.post("/generate_images", data=body, content_type=FORM)
    assert response.status_code == 413
    assert response.get_json()["code"] == "request_entity_too_large"
    assert files_under(data_dir) == []


@pytest.mark.parametrize("method, path, status", [
    ("get", "/nowhere", 404), ("get", "/generate_images", 405), ("delete", "/", 405),
])
def test_routing_errors_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert response.get_json()["status"] == status


def test_unexpected_errors_are_json_without_a_trace(make_stack):
    app, services = make_stack()
    services.pipeline.run = lambda *a: 1 / 0
    response = app.test_client().post("/generate_images", data=CURL_BODY)
    assert response.status_code == 500
    problem = response.get_json()
    assert problem["code"] == "internal_error" and "ZeroDivision" not in response.get_data(as_text=True)


def test_health_answers_as_the_original_service(client):
    assert client.get("/").get_json() == {"health": "true"}
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json()["status"] == "ready"


def test_readyz_fails_when_the_data_folder_cannot_be_written(make_app, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    client = make_app(data_dir=str(blocker / "images")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["code"] == "not_ready"


def test_images_are_served_in_offline_mode(client):
    key = client.post("/generate_images", json={**json.loads(CURL_BODY), "count": 1}).get_json()["images"][0]
    response = client.get(f"/images/{key}")
    assert response.status_code == 200 and response.content_type == "image/png"
    assert Image.open(io.BytesIO(response.data)).size == (1024, 1024)


@pytest.mark.parametrize("path", [
    "/images/../settings.py", "/images/%2e%2e/%2e%2e/etc/passwd", "/images/000/.hidden.png",
    "/images/quarantine/000/x.png", "/images/missing.png", "/images//etc/passwd",
])
def test_image_route_refuses_anything_outside_the_store(client, data_dir, path):
    (data_dir / "000").mkdir()
    (data_dir / "000" / ".hidden.png").write_bytes(b"secret")
    (data_dir / "quarantine" / "000").mkdir(parents=True)
    (data_dir / "quarantine" / "000" / "x.png").write_bytes(b"secret")
    response = client.get(path)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_settings_from_environment_are_checked():
    from settings import SettingsError
    with pytest.raises(SettingsError, match="AIG_STORE"):
        Settings.from_env({"AIG_STORE": "tape"})
    with pytest.raises(SettingsError, match="AIG_S3_BUCKET"):
        Settings.from_env({"AIG_STORE": "s3"})
    with pytest.raises(SettingsError, match="AIG_REQUEST_DEADLINE_SECONDS"):
        Settings.from_env({"AIG_REQUEST_DEADLINE_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="AIG_BEDROCK_MODEL_ID"):
        Settings.from_env({"AIG_MODEL": "bedrock", "AIG_BEDROCK_MODEL_ID": "stability.sd3"})
    with pytest.raises(SettingsError, match="time-out ladder"):
        Settings.from_env({"AIG_REQUEST_DEADLINE_SECONDS": "30", "AIG_BEDROCK_READ_TIMEOUT_SECONDS": "60"})
    settings = Settings.from_env({"AIG_S3_KEY_PREFIX": "/tenant/a/", "AIG_MODERATION_MIN_CONFIDENCE": "75"})
    assert settings.s3_key_prefix == "tenant/a/" and settings.moderation_min_confidence == 75.0


def test_the_default_settings_run_offline_with_no_environment():
    settings = Settings.from_env({})
    assert settings.offline and settings.store == "filesystem" and settings.moderation == "off"
    assert os.path.basename(settings.data_dir) == "images"


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"prompt": "red porsche", "output_folder": "000/111",}', "is not valid JSON: Expecting property name "
                                                                 "enclosed in double quotes at line 1 column 54"),
    (b"prompt=red+porsche&output_folder=000%2F111", "It looks like a form"),
    (b'["prompt"]', "must be a JSON object, not an array"),
    (b"", "is empty"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b"[" * 32_000 + b"]" * 32_000, "nested too deeply"),
])
def test_a_body_that_is_no_json_object_says_where_and_what_is_expected(client, data_dir, raw, words):
    response = client.post("/generate_images", data=raw)
    assert response.status_code == 400
    error = response.get_json()["errors"][0]
    assert error["field"] == "body" and words in error["message"], error["message"]
    assert list(data_dir.rglob("*")) == []


def test_json_answers_end_with_a_newline(client):
    assert client.get("/healthz").data.endswith(b"}\n")
    assert client.post("/generate_images", data=b"[]").data.endswith(b"}\n")


def test_records_prune_drops_old_records_and_keeps_recent_ones(make_app, data_dir):
    app = make_app(record_retention_days=7)
    client = app.test_client()
    old = client.post("/generate_images", data=CURL_BODY).get_json()["record"]
    recent = client.post("/generate_images", data=CURL_BODY).get_json()["record"]
    month_ago = time.time() - 30 * 86400
    os.utime(data_dir / old, (month_ago, month_ago))
    result = app.test_cli_runner().invoke(args=["records", "prune"])
    assert result.exit_code == 0 and "pruned 1 request record" in result.output
    assert not (data_dir / old).exists() and (data_dir / recent).exists()
    assert len(images_under(data_dir)) == 8  # images are never pruned
