"""Logs: one JSON object a line on stdout, the request id on every line of a request, one access line each."""

from __future__ import annotations

import json
import logging

import pytest

from admin.api_keys import add_key
from tests.fakes import FakeModel
from web.logging_setup import StdoutHandler, configure_logging

pytestmark = pytest.mark.unit

BODY = {"prompt": "a red bicycle", "output_folder": "000/111", "file_name_prefix": "bike"}


def json_lines(text: str) -> list[dict]:
    """Every stdout line, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_line_is_json_with_time_level_logger_message(make_app, capsys):
    app = make_app()
    app.test_client().get("/healthz")
    lines = json_lines(capsys.readouterr().out)
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= line.keys()


def test_the_request_id_is_on_every_line_logged_while_serving(make_app, capsys):
    app = make_app()

    def noisy():
        logging.getLogger("some.library").warning("working on it")
        return "ok"

    app.add_url_rule("/noisy", "noisy", noisy)
    response = app.test_client().get("/noisy", headers={"X-Request-ID": "rid-log-1"})
    assert response.headers["X-Request-ID"] == "rid-log-1"
    lines = [line for line in json_lines(capsys.readouterr().out) if line["request_id"] == "rid-log-1"]
    assert [line["logger"] for line in lines] == ["some.library", "ai_image_generator.access"]


def test_a_made_up_request_id_reaches_the_log_too(make_app, capsys):
    response = make_app().test_client().post("/generate_images", json=BODY)
    rid = response.json["request_id"]
    (access,) = [line for line in json_lines(capsys.readouterr().out)
                 if line["logger"] == "ai_image_generator.access"]
    assert access["request_id"] == rid == response.headers["X-Request-ID"]


def test_lines_outside_a_request_have_no_request_id(make_app, capsys):
    make_app()
    start_up = json_lines(capsys.readouterr().out)
    assert start_up and all(line["request_id"] is None for line in start_up)


def test_the_access_line_names_the_key_and_the_stage_times(make_app, tmp_path, capsys):
    keys = str(tmp_path / "keys.json")
    key = add_key(keys, "ui-prod")
    client = make_app(api_keys_file=keys).test_client()
    client.post("/generate_images", json=BODY, headers={"Authorization": f"Bearer {key}"})
    out = capsys.readouterr().out
    (access,) = [line for line in json_lines(out) if line["logger"] == "ai_image_generator.access"]
    assert access["key"] == "ui-prod"
    assert access["route"] == "/generate_images" and access["method"] == "POST" and access["status"] == 200
    assert access["images"] == 4 and access["flagged"] == 0
    for field in ("duration_ms", "model_ms", "screening_ms", "upload_ms"):
        assert isinstance(access[field], float) and access[field] >= 0, field
    assert access["duration_ms"] >= access["model_ms"]
    assert key not in out


def test_an_error_is_one_line_with_its_traceback_inside(make_stack, capsys):
    app, services = make_stack()
    services.pipeline.run = lambda *a, **k: 1 / 0
    response = app.test_client().post("/generate_images", json=BODY, headers={"X-Request-ID": "rid-boom"})
    assert response.status_code == 500
    errors = [line for line in json_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert errors and errors[0]["request_id"] == "rid-boom"
    assert "ZeroDivisionError" in errors[0]["exception"]


def test_configuring_twice_keeps_one_handler():
    configure_logging("info")
    configure_logging("debug")
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, StdoutHandler)]
    assert len(handlers) == 1
    assert logging.getLogger().level == logging.DEBUG
    configure_logging("info")


class LoggingModel(FakeModel):
    """A fake model that logs from the pool thread that runs it."""

    def start(self, spec, deadline):
        logging.getLogger("ai_image_generator.test").warning("drawing seed %s", spec.seed)
        return super().start(spec, deadline)


def test_log_lines_from_the_image_pool_carry_the_request_id(make_app, capsys):
    app = make_app(model=LoggingModel())
    app.test_client().post("/generate_images", headers={"X-Request-ID": "pool-rid-1"},
                           json={"prompt": "p", "output_folder": "a", "file_name_prefix": "b", "count": 2,
                                 "width": 512, "height": 512})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "drawing seed" in line]
    assert len(lines) == 2 and {line["request_id"] for line in lines} == {"pool-rid-1"}
