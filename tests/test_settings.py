"""Settings: defaults, GREENROOM_* environment variables and validation with clear errors."""

from __future__ import annotations

import os

import pytest

from greenroom import App, ConfigError, Settings, load_settings
from greenroom.settings import DEFAULT_DB, redact


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GREENROOM_"):
            monkeypatch.delenv(name)


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.db == DEFAULT_DB
    assert s.heartbeat_seconds < s.lease_seconds / 2
    assert s.lease_seconds <= 10, "lease expiry is the backstop for hung workers: keep it short"
    assert s.max_stalls == 3
    assert Settings() == s


@pytest.mark.parametrize(("lease", "heartbeat"), [(1.0, 0.5), (1.0, 0.9), (10.0, 20.0)])
def test_heartbeat_must_be_under_half_the_lease(lease: float, heartbeat: float) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(lease_seconds=lease, heartbeat_seconds=heartbeat)
    message = str(info.value)
    assert "heartbeat_seconds" in message and "lease_seconds" in message
    assert f"({heartbeat})" in message and f"({lease})" in message
    assert "\n" not in message, "one line"


def test_sub_second_values_for_tests_are_accepted() -> None:
    s = load_settings(lease_seconds=1.0, heartbeat_seconds=0.2, poll_seconds=0.05)
    assert (s.lease_seconds, s.heartbeat_seconds, s.poll_seconds) == (1.0, 0.2, 0.05)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lease_seconds", 0),
        ("heartbeat_seconds", -1),
        ("poll_seconds", 0),
        ("max_stalls", 0),
        ("concurrency", 0),
        ("shutdown_grace_seconds", -0.5),
        ("lease_seconds", "soon"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"invalid settings: {field}"):
        load_settings(**{field: value})


def test_environment_variables_are_read_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENROOM_LEASE_SECONDS", "4")
    monkeypatch.setenv("GREENROOM_HEARTBEAT_SECONDS", "1.5")
    monkeypatch.setenv("GREENROOM_DB", "sqlite:///tmp/x.db")
    s = load_settings()
    assert (s.lease_seconds, s.heartbeat_seconds, s.db) == (4.0, 1.5, "sqlite:///tmp/x.db")
    assert load_settings(heartbeat_seconds=0.5).heartbeat_seconds == 0.5, "overrides win"
    monkeypatch.setenv("GREENROOM_HEARTBEAT_SECONDS", "3")
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        load_settings()


def test_app_takes_its_database_from_the_argument() -> None:
    url = "sqlite:///somewhere/else.db"
    app = App(db=url, settings=load_settings(lease_seconds=2.0, heartbeat_seconds=0.5))
    assert app.settings.db == url
    assert app.settings.lease_seconds == 2.0
    assert App().settings.db == DEFAULT_DB


def test_environment_names_ignore_case_and_unknown_names_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("greenroom_concurrency", "7")
    monkeypatch.setenv("GREENROOM_NOT_A_SETTING", "x")  # not ours to refuse: ignored
    assert load_settings().concurrency == 7
    assert load_settings(concurrency=3).concurrency == 3, "arguments win"
    with pytest.raises(ConfigError, match="not_a_setting"):
        load_settings(not_a_setting=1)


def test_a_database_url_is_shown_without_its_password() -> None:
    assert redact("postgresql://ops:s3cr%40t@db:5432/gr") == "postgresql://ops:***@db:5432/gr"
    assert redact("postgresql://ops@db/gr") == "postgresql://ops@db/gr"
    assert redact("sqlite:///var/greenroom.db") == "sqlite:///var/greenroom.db"


async def test_a_worker_says_which_database_it_uses(sqlite_url: str) -> None:
    from structlog.testing import capture_logs

    from tests.helpers import fast_app, worker_running

    app = fast_app(sqlite_url)
    try:
        with capture_logs() as logs:
            async with worker_running(app):
                pass
    finally:
        app.close()
    [started] = [e for e in logs if e["event"] == "worker started"]
    assert started["database"] == sqlite_url
