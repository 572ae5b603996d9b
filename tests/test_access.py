"""API keys: made by the CLI, accepted in either header, revoked live, stored hashed, never logged."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from admin.api_keys import KeyFileError, add_key, digest, read_keys
from settings import SettingsError

pytestmark = pytest.mark.unit

BODY = {"prompt": "a red bicycle", "output_folder": "000/111", "file_name_prefix": "bike"}


@pytest.fixture
def keys_file(tmp_path):
    return tmp_path / "keys.json"


@pytest.fixture
def keyed_app(make_app, keys_file):
    return make_app(api_keys_file=str(keys_file))


def cli_add(app, name: str) -> str:
    result = app.test_cli_runner().invoke(args=["keys", "add", name])
    assert result.exit_code == 0, result.output
    # The key is the one line on stdout that is not a JSON log line.
    (key,) = [line for line in result.stdout.splitlines() if line and not line.startswith("{")]
    return key


def generate(client, **headers):
    return client.post("/generate_images", json=BODY, headers=headers)


def test_keys_cli_adds_a_key_that_works_with_either_header(keyed_app):
    key = cli_add(keyed_app, "ui")
    client = keyed_app.test_client()
    assert key.startswith("aig_") and len(key) > 40
    assert generate(client, Authorization=f"Bearer {key}").status_code == 200
    assert generate(client, **{"X-API-Key": key}).status_code == 200


def test_keys_file_holds_only_hashes_and_is_not_world_readable(keyed_app, keys_file):
    key = cli_add(keyed_app, "ui")
    text = keys_file.read_text()
    assert key not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["name"] == "ui" and entry["sha256"] == digest(key)
    # Group-readable for the service user; nothing for the world.
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o640
    assert not [p for p in os.listdir(keys_file.parent) if p.endswith(".tmp")], "a temp file was left behind"


def test_a_rewrite_keeps_the_mode_the_operator_chose(keyed_app, keys_file):
    cli_add(keyed_app, "ui")
    os.chmod(keys_file, 0o600)
    cli_add(keyed_app, "batch")
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600


def test_keys_cli_lists_names_not_keys(keyed_app):
    key = cli_add(keyed_app, "ui")
    cli_add(keyed_app, "batch")
    result = keyed_app.test_cli_runner().invoke(args=["keys", "list"])
    names = [line.split("\t")[0] for line in result.stdout.splitlines() if not line.startswith("{")]
    assert names == ["ui", "batch"]
    assert key not in result.output


def test_keys_cli_refuses_a_duplicate_name_and_an_unknown_revoke(keyed_app):
    cli_add(keyed_app, "ui")
    runner = keyed_app.test_cli_runner()
    assert runner.invoke(args=["keys", "add", "ui"]).exit_code != 0
    assert runner.invoke(args=["keys", "revoke", "nobody"]).exit_code != 0
    assert runner.invoke(args=["keys", "add", "bad name!"]).exit_code != 0


def test_a_revoked_key_is_refused_without_a_restart(keyed_app):
    key = cli_add(keyed_app, "ui")
    other = cli_add(keyed_app, "batch")
    client = keyed_app.test_client()
    assert generate(client, Authorization=f"Bearer {key}").status_code == 200
    result = keyed_app.test_cli_runner().invoke(args=["keys", "revoke", "ui"])
    assert result.exit_code == 0, result.output
    refused = generate(client, Authorization=f"Bearer {key}")
    assert refused.status_code == 401 and refused.json["code"] == "invalid_api_key"
    assert generate(client, Authorization=f"Bearer {other}").status_code == 200


def test_a_key_added_by_another_process_works_without_a_restart(keyed_app, keys_file):
    client = keyed_app.test_client()
    assert generate(client).status_code == 401
    key = add_key(str(keys_file), "late")
    assert generate(client, **{"X-API-Key": key}).status_code == 200


def test_a_missing_key_gets_a_json_401_with_a_bearer_challenge(keyed_app):
    cli_add(keyed_app, "ui")
    response = generate(keyed_app.test_client(), **{"X-Request-ID": "rid-401"})
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "missing_api_key" and response.json["request_id"] == "rid-401"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["X-Request-ID"] == "rid-401"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer aig_not-a-real-key"},
    {"X-API-Key": "aig_not-a-real-key"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
])
def test_a_wrong_key_gets_a_json_401(keyed_app, headers):
    cli_add(keyed_app, "ui")
    response = generate(keyed_app.test_client(), **headers)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert response.json["code"] in ("invalid_api_key", "missing_api_key")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_every_route_but_health_needs_a_key(keyed_app):
    cli_add(keyed_app, "ui")
    client = keyed_app.test_client()
    for path in ("/", "/healthz", "/readyz"):
        assert client.get(path).status_code == 200, path
    for path in ("/images/000/111/x.png", "/no-such-route"):
        assert client.get(path).status_code == 401, path


def test_the_key_never_appears_in_logs(keyed_app, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    key = cli_add(keyed_app, "ui")
    client = keyed_app.test_client()
    generate(client, Authorization=f"Bearer {key}")
    generate(client, Authorization=f"Bearer {key}x")
    generate(client, **{"X-API-Key": key[:-1]})
    keyed_app.test_cli_runner().invoke(args=["keys", "revoke", "ui"])
    generate(client, Authorization=f"Bearer {key}")
    out = capsys.readouterr().out
    assert out.count('"logger": "ai_image_generator.access"') == 4
    assert key not in out and key[:-1] not in out
    assert key not in caplog.text and key[:-1] not in caplog.text


def test_offline_without_keys_is_open_and_says_so(make_app, caplog):
    caplog.set_level(logging.INFO)
    app = make_app()
    assert "API keys are off" in caplog.text and "open" in caplog.text
    assert generate(app.test_client()).status_code == 200


def test_a_broken_keys_file_stops_start_up(make_app, keys_file):
    keys_file.write_text("{not json")
    with pytest.raises(SettingsError, match="AIG_API_KEYS_FILE"):
        make_app(api_keys_file=str(keys_file))


def test_a_keys_file_broken_while_running_refuses_every_key(keyed_app, keys_file):
    key = cli_add(keyed_app, "ui")
    client = keyed_app.test_client()
    assert generate(client, **{"X-API-Key": key}).status_code == 200
    keys_file.write_text('{"keys": [')
    assert generate(client, **{"X-API-Key": key}).status_code == 401


def test_read_keys_rejects_a_file_that_is_not_a_keys_file(keys_file):
    keys_file.write_text('{"users": []}')
    with pytest.raises(KeyFileError):
        read_keys(str(keys_file))


def test_a_signed_image_url_opens_without_a_key_and_nothing_else_does(keyed_app):
    key = cli_add(keyed_app, "ui")
    client = keyed_app.test_client()
    url = generate(client, Authorization=f"Bearer {key}").get_json()["image_details"][0]["url"]
    path, query = url.removeprefix("http://localhost").split("?")
    assert client.get(f"{path}?{query}").status_code == 200  # no key header: an <img src>
    assert client.get(path).status_code == 401
    forged = query.replace("signature=", "signature=0")
    assert client.get(f"{path}?{forged}").status_code == 401
    other = path.rsplit("/", 1)[0] + "/other.png"
    assert client.get(f"{other}?{query}").status_code == 401  # the signature is for one key only


@pytest.mark.parametrize("query", ["expires=%C2%B2&signature=" + "0" * 64, "expires=" + "9" * 5000 + "&signature=x",
                                   "expires=99999999999&signature=%C3%A9" * 1])
def test_a_malformed_signature_is_a_401_never_a_500(keyed_app, query):
    assert keyed_app.test_client().get(f"/images/a/b.png?{query}").status_code == 401


def test_with_keys_on_a_caller_sees_only_its_own_records(keyed_app):
    alice, bob = cli_add(keyed_app, "alice"), cli_add(keyed_app, "bob")
    client = keyed_app.test_client()
    assert generate(client, Authorization=f"Bearer {alice}").status_code == 200
    mine = client.get(f"/records?folder={BODY['output_folder']}", headers={"Authorization": f"Bearer {alice}"})
    theirs = client.get(f"/records?folder={BODY['output_folder']}", headers={"Authorization": f"Bearer {bob}"})
    assert len(mine.get_json()["records"]) == 1 and theirs.get_json()["records"] == []
