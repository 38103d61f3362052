"""A bounded schemathesis run against a real node's `/api/v3/openapi.json`: no 5xx.

Every operation of the document gets a handful of generated requests (valid and invalid path,
query and body values) with the default app's credentials, over real HTTP to a node started by
`app_factory`. schemathesis' calls are blocking (`requests`), so they run in a worker thread while
the node keeps serving on the test's event loop. The rule: no answer is a server error (5xx).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import AppFactory
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")

NODE = "test@127.0.0.1"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:public").decode()}
#: Examples per operation (about 40 operations: a few seconds in all); ST_EXAMPLES overrides.
EXAMPLES = int(os.environ.get("ST_EXAMPLES", "8"))


@pytest.fixture
def keep_log_level() -> Iterator[None]:
    """`PUT /log_level` changes the root logger's level: put it back for the other tests."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def run_schemathesis(base: str) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_url(base + "/api/v3/openapi.json", headers=AUTH)
    calls = 0
    failures: list[str] = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [operation.as_strategy(mode) for mode in modes]
        if "{node}" in operation.path:  # also reach the handlers behind the node lookup
            known = {"node": NODE, "plugin": "presence"} if "{plugin}" in operation.path else {}
            known.setdefault("node", NODE)
            strategies += [operation.as_strategy(mode, path_parameters=known) for mode in modes]
        strategy = st.one_of(*strategies)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=base + "/api/v3", headers=AUTH, timeout=10)
            calls += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {response.request.url} body={case.body!r}: "
                    f"{response.status_code} {response.text[:200]}"
                )

        check()
    return calls, failures


@pytest.mark.timeout(120)
async def test_schemathesis_finds_no_server_errors(
    app_factory: AppFactory, keep_log_level: None
) -> None:
    app = await app_factory()
    base = f"http://127.0.0.1:{app.http_port}"
    calls, failures = await asyncio.to_thread(run_schemathesis, base)
    assert calls >= 40, calls
    assert failures == [], "\n".join(failures)
