"""Management API security: auth on every listed route, constant-time secret checks, no
credentials in logs, request body limits (issue 7, "Management API security")."""

from __future__ import annotations

import base64
import hmac
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from api_support import (
    ADMIN,
    Api,
    AppFactory,
    api_fixture,  # noqa: F401 (the `api` fixture)
    concrete,
    make_api,
)

from broker.server.config import ConfigError, ManagementApp, ManagementConfig, parse_config
from management import apps as apps_module
from management.apps import AppStore, add_app

SECRET = "Zx7-never-log-me-4f1c9e"  # an app secret no log line may contain
WRONG = "Qw3-wrong-guess-b62d0a"  # a wrong password, no more loggable


def management(**kw: Any) -> ManagementConfig:
    return ManagementConfig(bind="127.0.0.1", port=0, **kw)


# -- Basic auth on every route -------------------------------------------------------------------


async def test_every_route_of_the_route_list_answers_401_without_credentials(api: Api) -> None:
    """The routes come from `GET /api/v3/` itself (what a client discovers), each path with and
    without its trailing slash, without credentials and with wrong ones."""
    listed = await api.ok("GET", "/api/v3/")
    assert len(listed) >= 38
    for route in listed:
        path = "/api/v3" + concrete(route["path"]).rstrip("/")
        for url in (path, path + "/"):
            for auth in (None, ("admin", "wrong"), ("nobody", "public")):
                reply = await api.request(route["method"], url, auth=auth, json={})
                assert reply.status == 401, (route["name"], url, auth, reply.status)
                assert reply.headers["WWW-Authenticate"] == 'Basic realm="minibroker"'
                assert reply.body == {"message": "unauthorized"}
    assert (await api.get("/api/v3/openapi.json", auth=None)).status == 401


async def test_secret_checks_use_hmac_compare_digest(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured (plain) secrets, hashed file secrets and unknown apps all go through
    `hmac.compare_digest`; no `==` on a secret decides a login."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apps_module.hmac, "compare_digest", spy)
    add_app(tmp_path, "filed", SECRET)
    store = AppStore(tmp_path, [ManagementApp("ops", SECRET)], default_app=False)
    cases = [("ops", SECRET, True), ("ops", WRONG, False), ("filed", SECRET, True),
             ("filed", WRONG, False), ("ghost", WRONG, False)]  # fmt: skip
    for app_id, secret, expected in cases:
        calls.clear()
        assert await store.authenticate(app_id, secret) is expected, app_id
        assert calls, f"no compare_digest for {app_id}"
    source = Path(apps_module.__file__).read_text(encoding="utf-8")
    assert not re.search(r"secret\w*\s*==|==\s*\w*secret", source)


# -- no credentials in logs ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_credentials_never_appear_in_logs(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await app_factory(management=management(apps=[ManagementApp("ops", SECRET)]))
    async for client in make_api(app, mode):
        assert (await client.get("/api/v3/brokers", auth=("ops", SECRET))).status == 200
        assert (await client.get("/api/v3/brokers", auth=("ops", WRONG))).status == 401
        assert (await client.get("/api/v3/brokers", auth=(WRONG, SECRET))).status == 401
        assert (await client.post("/api/v3/banned", auth=("ops", WRONG), json={})).status == 401
        bad = {"Authorization": "Basic " + base64.b64encode(WRONG.encode()).decode()}
        assert (await client.get("/api/v3/brokers", auth=None, headers=bad)).status == 401
    assert caplog.records, "nothing was logged at all: the check would be vacuous"
    forbidden = [SECRET, WRONG]
    forbidden += [base64.b64encode(f"ops:{s}".encode()).decode() for s in (SECRET, WRONG)]
    for record in caplog.records:
        text = " ".join(
            (record.getMessage(), repr(record.args), record.exc_text or "", str(record.__dict__))
        )
        for secret in forbidden:
            assert secret not in text, (record.name, record.getMessage())


# -- request body size limits --------------------------------------------------------------------


async def test_body_over_the_default_limit_is_413_json(api: Api) -> None:
    big = {"topic": "t", "payload": "x" * (1024 * 1024 + 10), "qos": 0}
    reply = await api.post("/api/v3/mqtt/publish", json=big)
    assert reply.status == 413
    assert isinstance(reply.body, dict) and isinstance(reply.body.get("message"), str)
    # Without credentials the body is never read: 401 first.
    reply = await api.post("/api/v3/mqtt/publish", json=big, auth=None)
    assert reply.status == 401
    small = {"topic": "t", "payload": "x" * 1000, "qos": 0}
    assert (await api.post("/api/v3/mqtt/publish", json=small)).status == 200


@pytest.mark.parametrize("mode", ["test_client", "real_http"])
async def test_configured_max_body_size(app_factory: AppFactory, mode: str) -> None:
    app = await app_factory(management=management(max_body_size=4096))
    async for client in make_api(app, mode):
        over = {"topic": "t", "payload": "x" * 5000}
        reply = await client.post("/api/v3/mqtt/publish", json=over)
        assert reply.status == 413 and isinstance(reply.body["message"], str), reply.text
        form = {"topic": "t", "payload": "y" * 5000}  # a form body is limited the same way
        reply = await client.post("/api/v3/mqtt/publish", data=form)
        assert reply.status == 413, reply.text
        under = {"topic": "t", "payload": "x" * 3000}
        assert (await client.post("/api/v3/mqtt/publish", json=under)).status == 200
        reply = await client.post("/api/v3/banned", json={"who": "w" * 5000, "as": "clientid"})
        assert reply.status == 413
        assert (await client.get("/api/v3/brokers", auth=ADMIN)).status == 200


def test_max_body_size_config_key() -> None:
    cfg = parse_config("[management]\nmax_body_size = 2048\n")
    assert cfg.management.max_body_size == 2048
    assert parse_config("").management.max_body_size == 1_048_576
    with pytest.raises(ConfigError, match="max_body_size"):
        parse_config("[management]\nmax_body_size = 10\n")


# -- 500s found by probing the API (regressions) -------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("[" * 100_000 + "]" * 100_000, "bad_json", id="deeply_nested_array"),
        pytest.param('{"a":' * 50_000 + "1" + "}" * 50_000, "bad_json", id="deeply_nested_object"),
        pytest.param('{"topic": "a", "payload": "\\ud800"}', "bad_payload", id="lone_surrogate"),
    ],
)
async def test_hostile_json_bodies_are_400_not_500(api: Api, body: str, message: str) -> None:
    """These were 500 internal_error: json.loads' RecursionError, and a payload string that
    cannot be encoded as UTF-8."""
    headers = {"Content-Type": "application/json"}
    reply = await api.post("/api/v3/mqtt/publish", data=body, headers=headers)
    assert reply.status == 400, reply.text
    assert reply.body["message"] == message
