"""GET /api/v3/retained/: our read-only addition (the dashboard's retained messages page)."""

from __future__ import annotations

import base64

from api_support import (
    NODE,
    Api,
    api_fixture,  # noqa: F401 (the `api` fixture)
    check,
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
