"""GET /api/v3/retained/: our read-only addition (the dashboard's retained messages page)."""

from __future__ import annotations

import base64

import aiomqtt
from api_support import (
    NODE,
    Api,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
    eventually,
    mqtt,
)


async def test_retained_lists_topics_payloads_and_paginates(api: Api) -> None:
    assert await api.ok("GET", "/api/v3/retained/") == {
        "items": [],
        "meta": {"page": 1, "limit": 10000, "count": 0},
    }
    async with mqtt(api, "pub") as pub:
        await pub.publish("ret/b", b"two", qos=1, retain=True)
        await pub.publish("ret/a", "één".encode(), qos=0, retain=True)
        await pub.publish("ret/bin", b"\x00\xff\xfe", qos=1, retain=True)
        await pub.publish("not/kept", b"x")  # not retained
    body = {"topic": "ret/c", "payload": "api", "retain": True, "qos": 2, "client_id": "rest"}
    assert await api.ok("POST", "/api/v3/mqtt/publish", json=body) == {"code": 0}

    page = await api.ok("GET", "/api/v3/retained")
    check(page, "page:retained")
    rows = {r["topic"]: r for r in page["items"]}
    assert [r["topic"] for r in page["items"]] == ["ret/a", "ret/b", "ret/bin", "ret/c"]
    assert page["meta"]["count"] == 4
    assert rows["ret/a"]["payload"] == "één" and rows["ret/a"]["encoding"] == "plain"
    assert rows["ret/a"]["qos"] == 0 and rows["ret/b"]["qos"] == 1
    assert rows["ret/bin"]["encoding"] == "base64"
    assert base64.b64decode(rows["ret/bin"]["payload"]) == b"\x00\xff\xfe"
    assert rows["ret/b"]["client_id"] == "pub" and rows["ret/c"]["client_id"] == "rest"
    assert all(r["node"] == NODE and r["published_at"] > 0 for r in rows.values())

    second = await api.ok("GET", "/api/v3/retained/?_page=2&_limit=3")
    assert [r["topic"] for r in second["items"]] == ["ret/c"]
    assert second["meta"] == {"page": 2, "limit": 3, "count": 4}

    # An empty retained publish clears the topic.
    async with mqtt(api, "pub") as pub:
        await pub.publish("ret/b", b"", retain=True)
    topics = [r["topic"] for r in (await api.ok("GET", "/api/v3/retained/"))["items"]]
    assert topics == ["ret/a", "ret/bin", "ret/c"]
    assert (await api.get("/api/v3/retained/?_page=0")).status == 400


async def test_delete_retained_clears_the_topic_for_new_subscribers(api: Api) -> None:
    async with mqtt(api, "pub") as pub:
        await pub.publish("del/a/b", b"old", qos=1, retain=True)
        await pub.publish("del/keep", b"kept", qos=1, retain=True)
    assert await api.ok("DELETE", "/api/v3/retained/del%2Fa%2Fb") == "ok"
    topics = [r["topic"] for r in (await api.ok("GET", "/api/v3/retained/"))["items"]]
    assert topics == ["del/keep"]
    # a subscriber arriving now gets the retained message that is left, not the deleted one
    async with mqtt(api, "late") as late:
        await late.subscribe("del/#", qos=1)
        message = await anext(late.messages)
        assert (message.topic.value, message.payload) == ("del/keep", b"kept")
    missing = await api.request("DELETE", "/api/v3/retained/del%2Fa%2Fb")
    assert missing.status == 404  # deleted already: nothing to delete
    wildcard = await api.request("DELETE", "/api/v3/retained/del%2F%23")
    assert wildcard.status == 400  # a topic name, not a filter


async def test_delete_retained_on_every_node_of_a_cluster() -> None:
    from broker.embedded import embedded_cluster

    async with embedded_cluster(2) as cluster:
        first, second = cluster[0], cluster[1]
        async with aiomqtt.Client(first.host, first.mqtt_port) as pub:
            await pub.publish("site/name", b"north", qos=1, retain=True)
        assert second.app is not None and first.app is not None
        await eventually(lambda: second.app.broker.retained.get("site/name") is not None)
        async with second.rest() as api:  # asked on the node that did not receive the publish
            assert await api.delete("/retained/site%2Fname") == "ok"
        assert first.app.broker.retained.get("site/name") is None
        assert second.app.broker.retained.get("site/name") is None
