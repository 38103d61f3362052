"""The dashboard of a node of workers (`minibroker start --workers 2`, real processes): the
overview lists each worker (pid, status, connections) and the clients, sessions and
subscriptions lists say which worker holds each row, as the REST API does.

`workers.js` (the per-worker rows) runs in node against the node's own API answers; the whole
page runs in Debian's headless Chromium (`tests/browser/workers.mjs`, skipped without chromium,
node or playwright-core, as in test_dashboard_browser.py). Clients are raw MQTT connections
spread over both workers by the kernel; only processes started here are signalled, by PID.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from api_support import ADMIN
from workers_support import (
    NODE,
    TIMEOUT,
    Rest,
    WorkersProc,
    clients_on_every_worker,
    start_workers,
)

from broker.protocol.packets import Subscribe, SubscriptionRequest
from management.dashboard_app import ASSETS

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NODE_BIN = shutil.which("node")
#: Clients at least on each worker.
EACH = 2


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersProc]:
    node = start_workers(tmp_path_factory.mktemp("dash-workers"))
    yield node
    node.stop()


@pytest.fixture
async def spread(
    workers: WorkersProc,
) -> AsyncIterator[tuple[Rest, dict[str, int], dict[int, int]]]:
    """Clients on both workers, each subscribed to `dash/<its id>`: the REST client, each
    client id's worker, and each worker's pid."""
    async with aiohttp.ClientSession() as session:
        rest = Rest(session, workers.ports["http"])
        rows = await rest.workers_running(2)
        clients, on = await clients_on_every_worker(workers.ports["mqtt"], rest, "dash", EACH)
        try:
            for client in clients:
                client.send(Subscribe(1, [SubscriptionRequest("dash/t", 0)]))
                await client.recv()  # SUBACK
            worker_of = {client_id: worker for worker, ids in on.items() for client_id in ids}
            await _wait_rows(rest, "/subscriptions/", len(clients))
            yield rest, worker_of, {int(r["worker"]): int(r["pid"]) for r in rows}
        finally:
            for client in clients:
                await client.close()


async def _wait_rows(rest: Rest, path: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            rows: list[dict[str, Any]] = await rest.get(path)
            if len(rows) == count:
                return rows
            await asyncio.sleep(0.1)


WORKERS_JS_CHECK = """
const base = %s;
globalThis.sessionStorage = { getItem: () => JSON.stringify({ app: 'admin', secret: 'public' }),
  setItem() {}, removeItem() {} };
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init) => realFetch(base + url.replace(/^\\.\\./, ''), init);
const { get } = await import('%s');
const { workerColumns, workerRows } = await import('%s');
const columns = [['client id', 'client_id'], ['node', 'node'], ['qos', 'qos']];
const out = { workers: workerRows(await get('/nodes/')) };
for (const path of ['/connections/', '/sessions/', '/subscriptions/']) {
  const items = (await get(path)).items;
  out[path] = { headers: workerColumns(columns, items).map(([name]) => name),
    workers: Object.fromEntries(items.map((r) => [r.client_id, r.worker])) };
}
out.plain = workerColumns(columns, [{ client_id: 'c', node: 'n' }]).map(([name]) => name);
console.log(JSON.stringify(out));
"""


async def test_worker_rows_from_the_api_in_node(
    workers: WorkersProc, spread: tuple[Rest, dict[str, int], dict[int, int]], tmp_path: Path
) -> None:
    """workers.js on the node's real answers (through api.js, the dashboard's door to the API):
    a row per worker with its pid, and a `worker` column after `node` in the lists."""
    if NODE_BIN is None:
        pytest.skip("needs node")
    _rest, worker_of, pids = spread
    script = tmp_path / "workers_check.mjs"
    base = json.dumps(f"http://127.0.0.1:{workers.ports['http']}")
    api_js, workers_js = (ASSETS / "api.js").as_uri(), (ASSETS / "workers.js").as_uri()
    script.write_text(WORKERS_JS_CHECK % (base, api_js, workers_js), "utf-8")
    proc = await asyncio.create_subprocess_exec(
        NODE_BIN, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    rows = out["workers"]
    assert [(r["node"], r["worker"], r["pid"], r["node_status"]) for r in rows] == [
        (NODE, index, pids[index], "Running") for index in (0, 1)
    ]
    held = Counter(worker_of.values())
    assert [r["connections"] for r in rows] == [held[0], held[1]]
    assert [r["__key"] for r in rows] == [f"{NODE}/0", f"{NODE}/1"]
    for path in ("/connections/", "/sessions/", "/subscriptions/"):
        assert out[path]["headers"] == ["client id", "node", "worker", "qos"], path
        assert out[path]["workers"] == worker_of, path
    assert out["plain"] == ["client id", "node", "qos"]  # a node of one worker: no column


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
@pytest.mark.skipif(
    not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
    reason="needs playwright-core (npm ci in tests/browser)",
)
@pytest.mark.skipif(NODE_BIN is None, reason="needs node")
@pytest.mark.timeout(120)
async def test_dashboard_shows_each_worker_in_chromium(
    workers: WorkersProc, spread: tuple[Rest, dict[str, int], dict[int, int]]
) -> None:
    _rest, worker_of, pids = spread
    config = {
        "url": f"http://127.0.0.1:{workers.ports['http']}/dashboard/",
        "app": ADMIN[0],
        "secret": ADMIN[1],
        "chromium": str(CHROMIUM),
        "workers": 2,
        "pages": {name: len(worker_of) for name in ("clients", "sessions", "subscriptions")},
    }
    proc = await asyncio.create_subprocess_exec(
        NODE_BIN or "node",
        str(BROWSER_DIR / "workers.mjs"),
        json.dumps(config),
        cwd=BROWSER_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(100):
        stdout, stderr = await proc.communicate()
    lines = [json.loads(x) for x in stdout.decode().splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines, f"{lines[-1:]}\n{stderr.decode()}"
    read = lines[-1]
    assert read["event"] == "read"

    def table_with(tables: list[dict[str, Any]], header: str) -> dict[str, Any]:
        found = [t for t in tables if header in t["headers"]]
        assert len(found) == 1, tables
        return found[0]

    nodes = table_with(read["overview"], "load 1/5/15")
    assert [row[0] for row in nodes["rows"]] == [NODE]  # one node ...
    assert nodes["rows"][0][nodes["headers"].index("workers")] == "2"  # ... of two workers
    per_worker = table_with(read["overview"], "pid")
    held = Counter(worker_of.values())
    assert per_worker["headers"][:5] == ["node", "worker", "pid", "status", "connections"]
    assert [row[:5] for row in per_worker["rows"]] == [
        [NODE, str(index), str(pids[index]), "Running", str(held[index])] for index in (0, 1)
    ]
    for name in ("clients", "sessions", "subscriptions"):
        listed = table_with(read[name], "client id")
        headers = listed["headers"]
        assert headers[headers.index("node") + 1] == "worker", (name, headers)
        column, worker = headers.index("client id"), headers.index("worker")
        shown = {row[column]: int(row[worker]) for row in listed["rows"]}
        assert shown == worker_of, name
