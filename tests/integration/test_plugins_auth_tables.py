"""auth_clientid and auth_username on one node: REST CRUD over real HTTP, real MQTT clients.

The decision at CONNECT is EMQX 3.x's: an id/username not in the table is no opinion (the next
plugin, then allow_anonymous); in the table, the right password is accepted and a wrong or
missing one refused (MQTT-3.1.4-2 / 3.2.2.3: CONNACK 4 "bad user name or password" on 3.1.1,
0x86 on 5.0). The cluster side is in test_cluster_auth_tables.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from api_support import ADMIN, basic, check, q
from plugin_support import (
    BAD_USERNAME_OR_PASSWORD,
    NOT_AUTHORIZED,
    app_config,
    connect_code,
    running_app,
)
from rawclient import RawClient

from broker.app import NodeApp
from broker.plugins.passwd_file import set_password, verify_password
from broker.protocol.constants import MQTT_5, ReasonCode
from broker.protocol.packets import ConnAck
from broker.server.config import ConfigError, ManagementConfig, parse_config

BOTH = {"auth_clientid": {"enabled": True}, "auth_username": {"enabled": True}}


class Http:
    """Real HTTP against a node's management port."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def __call__(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, "/api/v3" + path, **kw) as reply:
            text = await reply.text()
            return reply.status, json.loads(text) if text else None


@pytest.fixture
async def http_of() -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    def make(app: NodeApp) -> Http:
        session = aiohttp.ClientSession(
            f"http://127.0.0.1:{app.http_port}",
            headers=basic(*ADMIN),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        sessions.append(session)
        return Http(session)

    yield make
    for session in sessions:
        await session.close()


async def test_clientid_crud_over_real_http(tmp_path: Path, http_of: Any) -> None:
    async with running_app(app_config(tmp_path, plugins=BOTH)) as app:
        http = http_of(app)
        assert await http("GET", "/auth_clientid") == (200, [])
        status, body = await http("POST", "/auth_clientid",
                                  json={"clientid": "dev/1", "password": "s3cret"})  # fmt: skip
        assert (status, body) == (200, "ok")
        assert await http("POST", "/auth_clientid", json={"clientid": "dev2", "password": "p"}) == (
            200,
            "ok",
        )
        status, ids = await http("GET", "/auth_clientid/")
        assert (status, ids) == (200, ["dev/1", "dev2"])
        check(ids, "auth_key[]")
        status, entry = await http("GET", f"/auth_clientid/{q('dev/1')}")
        assert status == 200
        check(entry, "auth_clientid")
        assert entry["clientid"] == "dev/1" and entry["password"].startswith("$7$")
        assert verify_password("s3cret", entry["password"])  # stored hashed, never in clear
        assert "s3cret" not in json.dumps(entry)
        # an existing id: 409 existed (EMQX: {error, existed}); the password is unchanged
        assert await http("POST", "/auth_clientid", json={"clientid": "dev2", "password": "x"}) == (
            409,
            {"message": "existed"},
        )
        assert await http("PUT", "/auth_clientid/dev2", json={"password": "new"}) == (200, "ok")
        _, entry2 = await http("GET", "/auth_clientid/dev2")
        assert verify_password("new", entry2["password"])
        assert await http("PUT", "/auth_clientid/ghost", json={"password": "x"}) == (
            404,
            {"message": "not_found"},
        )
        assert await http("GET", "/auth_clientid/ghost") == (404, {"message": "not_found"})
        assert await http("DELETE", "/auth_clientid/dev2") == (200, "ok")
        assert await http("DELETE", "/auth_clientid/dev2") == (200, "ok")  # as EMQX: idempotent
        assert await http("GET", "/auth_clientid") == (200, ["dev/1"])
        assert await http("GET", "/auth_clientid/dev2") == (404, {"message": "not_found"})


async def test_bad_requests_are_400(tmp_path: Path, http_of: Any) -> None:
    async with running_app(app_config(tmp_path, plugins=BOTH)) as app:
        http = http_of(app)
        status, body = await http("POST", "/auth_username", json={"username": "u"})
        assert status == 400 and body["message"] == "missing mandatory params: ['password']"
        status, body = await http("POST", "/auth_username", json={"password": "p"})
        assert status == 400 and "username" in body["message"]
        for bad in ({"username": ["u"], "password": "p"}, {"username": "u", "password": {}},
                    {"username": "a\u0000b", "password": "p"},
                    {"username": "u" * 65536, "password": "p"}):  # fmt: skip
            status, body = await http("POST", "/auth_username", json=bad)
            assert status == 400, bad
        assert await http("POST", "/auth_username", data=b"{nope") == (
            400,
            {"message": "bad_json", "code": 109},
        )
        status, _ = await http("PUT", "/auth_username/u", json={})
        assert status == 400
        assert await http("GET", "/auth_username") == (200, [])  # nothing was stored


async def test_connect_is_checked_against_the_tables(tmp_path: Path, http_of: Any) -> None:
    cfg = app_config(tmp_path, plugins=BOTH, allow_anonymous=False)
    async with running_app(cfg) as app:
        http = http_of(app)
        await http("POST", "/auth_clientid", json={"clientid": "dev1", "password": "pw-c"})
        await http("POST", "/auth_username", json={"username": "alice", "password": "pw-u"})
        # by client id (no username needed), by username
        assert await connect_code(app, "dev1", username="any", password="pw-c") == 0
        assert await connect_code(app, "other", username="alice", password="pw-u") == 0
        # wrong or missing password of a listed id/username: bad user name or password
        assert await connect_code(app, "dev1", username="x", password="no") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await connect_code(app, "dev1", username="x") in BAD_USERNAME_OR_PASSWORD
        assert (
            await connect_code(app, "c9", username="alice", password="pw-c")
            in BAD_USERNAME_OR_PASSWORD
        )
        # in neither table: no opinion, so allow_anonymous = false refuses it (not authorized)
        assert await connect_code(app, "stranger", username="bob", password="x") in NOT_AUTHORIZED
        # a changed password takes effect at once; a deleted entry is unknown again
        await http("PUT", "/auth_username/alice", json={"password": "pw-2"})
        assert await connect_code(app, "c", username="alice", password="pw-u") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await connect_code(app, "c", username="alice", password="pw-2") == 0
        await http("DELETE", "/auth_clientid/dev1")
        assert await connect_code(app, "dev1", username="x", password="pw-c") in NOT_AUTHORIZED


async def test_mqtt_5_refusal_is_0x86(tmp_path: Path, http_of: Any) -> None:
    async with running_app(app_config(tmp_path, plugins=BOTH)) as app:
        await http_of(app)("POST", "/auth_clientid", json={"clientid": "v5", "password": "right"})
        v5 = aiomqtt.ProtocolVersion.V5
        # (aiomqtt sends a password only with a username; MQTT 5 allows it alone, 3.1.2.9)
        assert await connect_code(app, "v5", username="u", password="wrong", protocol=v5) == 0x86
        assert await connect_code(app, "v5", username="u", password="right", protocol=v5) == 0
        assert await connect_code(app, "anon", protocol=v5) == 0  # unlisted + allow_anonymous


async def test_routes_answer_404_while_the_plugin_is_not_loaded(
    tmp_path: Path, http_of: Any
) -> None:
    async with running_app(app_config(tmp_path)) as app:
        http = http_of(app)
        calls = [("GET", "/auth_clientid"), ("POST", "/auth_clientid"),
                 ("GET", "/auth_username/u"), ("DELETE", "/auth_username/u")]  # fmt: skip
        for method, path in calls:
            assert await http(method, path, json={}) == (404, {"message": "plugin_not_loaded"})
        node = q(app.config.node_name)
        assert await http("PUT", f"/nodes/{node}/plugins/auth_username/load") == (200, "ok")
        assert await http("POST", "/auth_username", json={"username": "u", "password": "p"}) == (
            200,
            "ok",
        )
        assert await connect_code(app, "c", username="u", password="bad") in (
            BAD_USERNAME_OR_PASSWORD
        )
        # unloaded: CONNECT no longer consults the table (allow_anonymous lets it in), the
        # routes are gone again, and the table is kept for the next load
        assert await http("PUT", f"/nodes/{node}/plugins/auth_username/unload") == (200, "ok")
        assert await connect_code(app, "c", username="u", password="bad") == 0
        assert (await http("GET", "/auth_username"))[0] == 404
        assert app.broker.replicated.table("auth_username").keys() == ["u"]
        await http("PUT", f"/nodes/{node}/plugins/auth_username/load")
        assert await http("GET", "/auth_username") == (200, ["u"])


async def test_tables_come_before_auth_passwd_and_unlisted_users_still_meet_it(
    tmp_path: Path, http_of: Any
) -> None:
    passwd = tmp_path / "passwd"
    set_password(str(passwd), "fileuser", "filepw")
    cfg = app_config(tmp_path, plugins=BOTH, password_file=str(passwd), allow_anonymous=False)
    async with running_app(cfg) as app:
        http = http_of(app)
        await http("POST", "/auth_username", json={"username": "apiuser", "password": "apipw"})
        assert await connect_code(app, "a", username="apiuser", password="apipw") == 0
        assert await connect_code(app, "b", username="fileuser", password="filepw") == 0
        assert await connect_code(app, "c", username="apiuser", password="filepw") in (
            BAD_USERNAME_OR_PASSWORD
        )
        # not in the table: auth_passwd decides, and it refuses a username its file lacks
        assert await connect_code(app, "d", username="nobody", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )


async def test_credentials_survive_a_restart(tmp_path: Path, http_of: Any) -> None:
    cfg = app_config(tmp_path, plugins=BOTH, allow_anonymous=False)
    async with running_app(cfg) as app:
        http = http_of(app)
        await http("POST", "/auth_clientid", json={"clientid": "keep", "password": "k"})
        await http("POST", "/auth_clientid", json={"clientid": "gone", "password": "g"})
        await http("DELETE", "/auth_clientid/gone")
    stored = (Path(cfg.data_dir) / "tables" / "auth_clientid.json").read_text()
    assert "keep" in stored and '"k"' not in stored  # only the hash is on disk
    async with running_app(cfg) as again:
        assert await http_of(again)("GET", "/auth_clientid") == (200, ["keep"])
        assert await connect_code(again, "keep", username="u", password="k") == 0
        assert await connect_code(again, "keep", username="u", password="x") in (
            BAD_USERNAME_OR_PASSWORD
        )
        assert await connect_code(again, "gone", username="u", password="g") in NOT_AUTHORIZED


async def test_route_list_and_openapi_document_have_the_routes(
    tmp_path: Path, http_of: Any
) -> None:
    async with running_app(app_config(tmp_path)) as app:
        http = http_of(app)
        _, routes = await http("GET", "/")
        listed = {(r["name"], r["method"], r["path"]) for r in routes}
        for kind, field in (("clientid", "clientid"), ("username", "username")):
            assert {
                (f"list_{kind}", "GET", f"/auth_{kind}"),
                (f"lookup_{kind}", "GET", f"/auth_{kind}/:{field}"),
                (f"add_{kind}", "POST", f"/auth_{kind}"),
                (f"update_{kind}", "PUT", f"/auth_{kind}/:{field}"),
                (f"delete_{kind}", "DELETE", f"/auth_{kind}/:{field}"),
            } <= listed
        _, doc = await http("GET", "/openapi.json")
        item = doc["paths"]["/auth_clientid/{clientid}"]
        assert set(item) == {"get", "put", "delete"}
        assert item["put"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/auth_password"
        }
        assert "409" in doc["paths"]["/auth_username"]["post"]["responses"]


async def test_mqtt_5_password_without_username_is_checked_by_client_id(
    tmp_path: Path, http_of: Any
) -> None:
    """MQTT 5.0 3.1.2.9 allows a Password without a User Name (3.1.1 did not, MQTT-3.1.2-22):
    auth_clientid needs no username, so the password alone decides."""
    cfg = app_config(tmp_path, plugins=BOTH, allow_anonymous=False)
    async with running_app(cfg) as app:
        await http_of(app)("POST", "/auth_clientid", json={"clientid": "raw", "password": "pw"})
        port = app.node.tcp_port
        for password, expected in ((b"pw", ReasonCode.SUCCESS),
                                   (b"no", ReasonCode.BAD_USER_NAME_OR_PASSWORD)):  # fmt: skip
            client, connack = await RawClient.connect(port, "raw", MQTT_5, password=password)
            try:
                assert isinstance(connack, ConnAck) and connack.reason_code == expected
            finally:
                await client.close()


def test_config_tables_of_the_plugins_take_enabled_only() -> None:
    cfg = parse_config("[plugins.auth_clientid]\nenabled = true\n[plugins.auth_username]\n")
    assert cfg.plugins["auth_clientid"] == {"enabled": True}
    with pytest.raises(ConfigError, match=r"plugins\.auth_username"):
        parse_config("[plugins.auth_username]\nenabled = true\nusers = []\n")


async def test_the_emqx_format(tmp_path: Path, http_of: Any) -> None:
    """api_format = "emqx": answers in EMQX 3.x's envelope; a plugin that is not loaded keeps
    its plain HTTP 404, as EMQX's filtered routes did."""
    management = ManagementConfig(bind="127.0.0.1", port=0, api_format="emqx")
    plugins = {"auth_clientid": {"enabled": True}}
    async with running_app(app_config(tmp_path, plugins=plugins, management=management)) as app:
        http = http_of(app)
        body = {"clientid": "c1", "password": "p"}
        assert await http("POST", "/auth_clientid", json=body) == (200, {"code": 0})
        assert await http("GET", "/auth_clientid") == (200, {"code": 0, "data": ["c1"]})
        status, answer = await http("GET", "/auth_clientid/c1")
        assert status == 200 and answer["code"] == 0 and answer["data"]["clientid"] == "c1"
        assert await http("POST", "/auth_clientid", json=body) == (
            200,
            {"code": 102, "message": "existed"},
        )
        status, answer = await http("POST", "/auth_clientid", json={"clientid": "c2"})
        assert status == 200 and answer["code"] == 107
        assert await http("GET", "/auth_username") == (404, {"message": "plugin_not_loaded"})
        assert await http("DELETE", "/auth_clientid/c1") == (200, {"code": 0})
