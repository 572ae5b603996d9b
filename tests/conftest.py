"""Shared fixtures: no test can reach real AWS, and every test gets a fresh offline app."""

from __future__ import annotations

import pytest

from ai_image_generator import create_app
from generation.model_chain import ModelChain
from services import build_services
from settings import Settings


@pytest.fixture(autouse=True)
def no_real_aws(monkeypatch):
    """Dummy credentials and region, so a stray boto3 call fails locally instead of reaching AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def data_dir(tmp_path):
    """The offline store's folder for one test."""
    path = tmp_path / "images"
    path.mkdir()
    return path


@pytest.fixture
def make_stack(data_dir):
    """Build an offline app and its services: settings overrides by name, fakes as model/store/screener."""

    def build(*, model=None, store=None, screener=None, **overrides):
        settings = Settings.from_env({}, **{"data_dir": str(data_dir), "job_db": str(data_dir.parent / "jobs.sqlite3"),
                                            **overrides})
        services = build_services(settings, models=ModelChain([model]) if model else None, store=store,
                                  screener=screener)
        return create_app(settings, services), services

    return build


@pytest.fixture
def make_app(make_stack):
    """Build an offline app (see make_stack)."""

    def build(**kwargs):
        return make_stack(**kwargs)[0]

    return build


@pytest.fixture
def app(make_app):
    """A fresh offline app."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client of the fresh offline app."""
    return app.test_client()


TIERS = ("unit", "integration", "live")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier, so `-m unit` (and the others) select what they say."""
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: give the module one tier marker of {TIERS}, not {sorted(tiers)}")
