"""Fixtures for tests over real HTTP: moto's S3 server, the Bedrock/Rekognition stand-in, an AWS-mode app.

Use with `pytest_plugins = ["tests.aws_fixtures"]` in a test module (or `from tests.aws_fixtures import *`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import boto3
import pytest
from flask import Flask
from flask.testing import FlaskClient
from moto.server import ThreadedMotoServer

from ai_image_generator import create_app
from backends import aws_clients
from services import Services, build_services
from settings import Settings
from standins.aws_standin import StandinServer

__all__ = ["AwsApp", "aws_app", "aws_env", "bucket", "moto_s3", "s3", "standin", "standin_server"]

# Leftover calls of a previous test (a read time-out leaves the stand-in sleeping) must end before
# the next test counts calls in flight.
QUIET_WAIT_SECONDS = 5.0


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on a free loopback port, for the whole session; yields its URL."""
    # werkzeug logs every request at INFO; the test output needs none of it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def standin_server():
    """The Bedrock Runtime + Rekognition stand-in for the whole session; flat PNGs unless a test asks."""
    server = StandinServer("127.0.0.1", 0, png_kind="flat").start()
    yield server
    server.stop()


@pytest.fixture
def standin(standin_server):
    """The stand-in with its knobs and counters reset for this test."""
    give_up = time.monotonic() + QUIET_WAIT_SECONDS
    while standin_server.stats()["in_flight"] and time.monotonic() < give_up:
        time.sleep(0.05)
    standin_server.reset()
    return standin_server


@pytest.fixture
def aws_env(monkeypatch, moto_s3, standin):
    """The standard AWS environment pointed at the local servers, with dummy credentials and no files."""
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_BEARER_TOKEN_BEDROCK", "AWS_RETRY_MODE",
                 "AWS_MAX_ATTEMPTS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # No user's ~/.aws files and no instance metadata: the tests see only what they set.
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", standin.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", standin.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", standin.url)
    # moto's server speaks SQS and DynamoDB too (the jobs' queue and table).
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_s3)
    # The process-wide session was made from whatever environment came before.
    aws_clients.reset_session()
    yield
    aws_clients.reset_session()


@pytest.fixture
def s3(aws_env):
    """A plain S3 client on moto, for setting up and inspecting buckets."""
    return boto3.client("s3")


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket for this test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    return name


@dataclass
class AwsApp:
    """An AWS-mode app, its test client and what it was built with."""

    app: Flask
    client: FlaskClient
    settings: Settings
    services: Services


@pytest.fixture
def aws_app(aws_env, bucket):
    """Build an app on Bedrock (stand-in), S3 (moto) and Rekognition (stand-in); env-style AIG_* overrides."""
    built: list[AwsApp] = []

    def build(**env: str) -> AwsApp:
        environ = {"AIG_MODEL": "bedrock", "AIG_STORE": "s3", "AIG_MODERATION": "rekognition",
                   "AIG_S3_BUCKET": bucket, **env}
        settings = Settings.from_env(environ)
        services = build_services(settings)
        app = create_app(settings, services)
        built.append(AwsApp(app, app.test_client(), settings, services))
        return built[-1]

    yield build
    for made in built:
        made.services.pipeline.executor.shutdown(wait=False, cancel_futures=True)
        if made.services.lifecycle is not None:
            made.services.lifecycle.stop()
