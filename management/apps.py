"""API apps (EMQX's AppID/AppSecret): who may call `/api/v3`, and the `minibroker apps` command.

Three sources, later ones winning for the same id:
  1. the default app `admin`/`public` (EMQX 3.x's), unless `[management] default_app = false`;
  2. `[[management.apps]]` in the config file (secrets in clear, as the file is the operator's);
  3. the replicated table `apps` (`broker.core.replicated`, saved in
     `<data_dir>/tables/apps.json`), written by the `/apps` API and `minibroker apps add|delete`,
     secrets hashed with PBKDF2-HMAC-SHA256 and a random salt
     (`pbkdf2_sha256$<iterations>$<salt>$<hash>`, base64). A deleted app is a tombstone there,
     which also hides a default or config app of that id.

Replication is the table's: every row carries its time, the newer row of an id wins (a
tombstone wins a tie); the API writes a change on every running node at once (`table_put`,
`table_delete`), and a node that was away pulls the tables from its peers (`cluster.replicas`).

The CLI edits the file of one node; a running node merges the file when it changes
(`ReplicatedStore.refresh`), so such apps take effect without a restart. A disabled (`status`
false) or expired (`expired` <= now) app is refused. Secrets are compared in constant time; a
verified hashed secret is remembered as an HMAC under a per-process key, so PBKDF2 runs once per
app and secret, not per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.core.replicated import ReplicatedTable, ReplicatedTables, Row
from broker.server.config import ManagementApp
from broker.server.replicated_store import ReplicatedStore, ReplicatedStoreError

log = logging.getLogger(__name__)

DEFAULT_APP_ID = "admin"
DEFAULT_APP_SECRET = "public"
#: The replicated table of the apps (`<data_dir>/tables/apps.json`).
TABLE = "apps"
HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 100_000


class AppError(Exception):
    """A `minibroker apps` command that cannot be done (message fit for the operator)."""


@dataclass(slots=True)
class App:
    id: str
    name: str = ""
    desc: str = ""
    status: bool = True
    expired: int | None = None
    source: str = "config"  # "default" | "config" | "data_dir" (the replicated table)
    secret: str | None = None  # in clear (default and config apps)
    secret_hash: str | None = None  # hashed (the table)
    updated_at: float = 0.0  # Unix seconds of the last change (the table row's `at`)

    def usable(self, now: float) -> bool:
        return self.status and (self.expired is None or now < self.expired)

    def row(self) -> dict[str, Any]:
        """The API's app object: never the secret, nor its hash."""
        return {
            "app_id": self.id,
            "name": self.name,
            "desc": self.desc,
            "status": self.status,
            "expired": self.expired,
        }

    def value(self) -> dict[str, Any]:
        """The table row's value (the id is the key, `updated_at` the row's time)."""
        return {
            "secret_hash": self.secret_hash,
            "name": self.name,
            "desc": self.desc,
            "status": self.status,
            "expired": self.expired,
        }


_VALUE_KEYS = ("secret_hash", "name", "desc", "status", "expired")


def app_from_row(app_id: str, value: Any, at: float) -> App:
    """An App from a row of the table; ValueError/TypeError if the value is malformed."""
    if not isinstance(value, dict):
        raise TypeError("an app row must be an object")
    secret_hash, expired = value.get("secret_hash"), value.get("expired")
    if not isinstance(secret_hash, str):
        raise ValueError(f"app {app_id!r} has no secret_hash")
    return App(
        id=app_id,
        name=str(value.get("name", "")),
        desc=str(value.get("desc", "")),
        status=bool(value.get("status", True)),
        expired=int(expired) if expired is not None else None,
        source="data_dir",
        secret_hash=secret_hash,
        updated_at=at,
    )


def table_apps(table: ReplicatedTable) -> dict[str, App]:
    """The live apps of the table (a malformed row is logged and left out)."""
    out: dict[str, App] = {}
    for row in table.dump():
        if row["value"] is None:
            continue  # deleted
        try:
            out[row["key"]] = app_from_row(row["key"], row["value"], row["at"])
        except (TypeError, ValueError) as exc:
            log.warning("API app %r ignored: %s", row["key"], exc)
    return out


# -- hashing -------------------------------------------------------------------------------------


def hash_secret(secret: str, *, iterations: int = HASH_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{HASH_SCHEME}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, rounds, salt_b64, digest_b64 = stored.split("$")
        if scheme != HASH_SCHEME:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
        iterations = int(rounds)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(digest, expected)


# -- the file, for `minibroker apps` -----------------------------------------------------------


def apps_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "tables" / f"{TABLE}.json"


def import_legacy(data_dir: str | os.PathLike[str], table: ReplicatedTable) -> int:
    """Merge `<data_dir>/apps.json` (where development builds kept the apps, no release did)
    into `table`, so an app that replaced `admin` there does not let the default back in.
    Idempotent (its rows are older than any change made since); rows changed."""
    path = Path(data_dir) / "apps.json"
    try:
        records = json.loads(path.read_text(encoding="utf-8")).get("apps", [])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, AttributeError) as exc:
        log.error("%s: cannot import the API apps: %s", path, exc)
        return 0
    rows: list[Row] = []
    for item in records if isinstance(records, list) else []:
        try:
            app_id, at = item["id"], float(item.get("updated_at", 0.0))
            value = None if item.get("deleted") else {k: item.get(k) for k in _VALUE_KEYS}
            if value is not None:
                app_from_row(app_id, value, at)  # raises for a malformed one
            rows.append(Row(app_id, at, value))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("%s: an app record is ignored: %s", path, exc)
    return table.merge(rows)


def open_table(data_dir: str | os.PathLike[str]) -> ReplicatedTable:
    """The apps table of `data_dir`, loaded; a change is saved at once (ReplicatedStoreError for
    a corrupt file)."""
    store = ReplicatedStore(ReplicatedTables(), os.fspath(data_dir))
    store.open()
    table = store.tables.table(TABLE)
    import_legacy(data_dir, table)
    return table


def stored_apps(data_dir: str | os.PathLike[str]) -> list[App]:
    """The apps stored in `data_dir` (not the deleted ones), by id."""
    return list(table_apps(open_table(data_dir)).values())


def add_app(
    data_dir: str | os.PathLike[str],
    app_id: str,
    secret: str,
    *,
    name: str = "",
    desc: str = "",
    expired: int | None = None,
    status: bool = True,
) -> App:
    if not app_id or not secret:
        raise AppError("the app id and secret must not be empty")
    table = open_table(data_dir)
    if table.get(app_id) is not None:
        raise AppError(f"app {app_id!r} already exists in {apps_path(data_dir)}; delete it first")
    app = make_app(app_id, secret, name=name, desc=desc, status=status, expired=expired)
    row = table.row(app_id)  # a tombstone: the new app must be newer
    app.updated_at = max(app.updated_at, row.at + 0.001) if row is not None else app.updated_at
    table.put(app_id, app.value(), app.updated_at)
    return app


def delete_app(data_dir: str | os.PathLike[str], app_id: str) -> None:
    """Replace the app by a tombstone (so that a peer's older copy cannot bring it back)."""
    table = open_table(data_dir)
    row = table.row(app_id)
    if row is None or row.value is None:
        raise AppError(f"no app {app_id!r} in {apps_path(data_dir)}")
    table.delete(app_id, max(time.time(), row.at + 0.001))


def make_app(
    app_id: str,
    secret: str,
    *,
    name: str = "",
    desc: str = "",
    status: bool = True,
    expired: int | None = None,
    now: float | None = None,
) -> App:
    """A new data_dir record with its secret hashed (the secret itself is not kept)."""
    return App(
        app_id,
        name,
        desc,
        status,
        expired,
        "data_dir",
        None,
        hash_secret(secret),
        time.time() if now is None else now,
    )


# -- the store the API authenticates against -----------------------------------------------------


class AppStore:
    """The effective apps of a node (default, config, the replicated table) and Basic-auth
    checks. `store` is the node's ReplicatedStore (None: one of its own over `data_dir`)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        configured: list[ManagementApp] | None = None,
        default_app: bool = True,
        store: ReplicatedStore | None = None,
    ) -> None:
        if store is None:
            store = ReplicatedStore(ReplicatedTables(), os.fspath(data_dir))
            store.open()
            import_legacy(data_dir, store.tables.table(TABLE))
        self.store = store
        self.path = apps_path(data_dir)
        self.configured = list(configured or [])
        self.default_app = default_app
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}

    @property
    def table(self) -> ReplicatedTable:
        return self.store.tables.table(TABLE)

    def apps(self) -> dict[str, App]:
        """The apps in force: the table's rows (tombstones remove) over config, default."""
        self.store.refresh(TABLE)  # apps the CLI added or deleted while the node runs
        out: dict[str, App] = {}
        if self.default_app:
            out[DEFAULT_APP_ID] = App(
                DEFAULT_APP_ID,
                "Default",
                "default app",
                source="default",
                secret=DEFAULT_APP_SECRET,
            )
        for c in self.configured:
            out[c.id] = App(c.id, c.name, c.desc, c.status, c.expired, "config", c.secret)
        table = self.table
        for app_id in list(out):
            row = table.row(app_id)
            if row is not None and row.value is None:  # deleted through the API or the CLI
                del out[app_id]
        out.update(table_apps(table))
        return out

    def default_in_use(self) -> bool:
        """True while `admin`/`public` lets anyone in (warned about at start)."""
        app = self.apps().get(DEFAULT_APP_ID)
        return app is not None and app.source == "default"

    # -- authentication ----------------------------------------------------------------------

    def _mark(self, app_id: str, secret: str, stored: str) -> bytes:
        msg = f"{app_id}\0{secret}\0{stored}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    async def authenticate(self, app_id: str, secret: str, now: float | None = None) -> bool:
        app = self.apps().get(app_id)
        if app is None:
            hmac.compare_digest(secret.encode(), b"\0" * len(secret.encode()))  # similar timing
            return False
        if not app.usable(time.time() if now is None else now):
            return False
        if app.secret is not None:
            return hmac.compare_digest(secret.encode("utf-8"), app.secret.encode("utf-8"))
        stored = app.secret_hash or ""
        mark = self._mark(app_id, secret, stored)
        known = self._verified.get(app_id)
        if known is not None and hmac.compare_digest(known, mark):
            return True
        if not await asyncio.to_thread(verify_secret, secret, stored):
            return False
        # The app may have been disabled, deleted or re-keyed while PBKDF2 ran: check again.
        current = self.apps().get(app_id)
        moment = time.time() if now is None else now
        if current is None or current.secret_hash != stored or not current.usable(moment):
            return False
        self._verified[app_id] = mark
        return True


# -- `minibroker apps` ---------------------------------------------------------------------------


def add_apps_parser(sub: Any) -> None:
    """Add `apps add|list|delete` to the CLI's subparsers (`sub` from add_subparsers())."""
    apps = sub.add_parser("apps", help="manage the management API's apps (AppID/AppSecret)")
    apps.add_argument(
        "--data-dir",
        default="./data",
        metavar="DIR",
        help="the node's data directory (default ./data)",
    )
    verbs = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")
    add = verbs.add_parser("add", help="add an app (its secret is stored hashed)")
    add.add_argument("id", metavar="ID")
    add.add_argument("secret", metavar="SECRET")
    add.add_argument("--name", default="", metavar="N")
    add.add_argument("--desc", default="", metavar="D")
    add.add_argument(
        "--expired",
        type=int,
        default=None,
        metavar="UNIX",
        help="refuse the app from this Unix time on",
    )
    add.add_argument("--disabled", action="store_true", help="store it disabled")
    verbs.add_parser("list", help="list the apps stored in the data directory")
    delete = verbs.add_parser("delete", help="delete an app")
    delete.add_argument("id", metavar="ID")


def apps_main(args: argparse.Namespace) -> int:
    """Run one `minibroker apps` action; 0 on success, 1 with a message on stderr otherwise."""
    try:
        if args.apps_command == "add":
            add_app(
                args.data_dir,
                args.id,
                args.secret,
                name=args.name,
                desc=args.desc,
                expired=args.expired,
                status=not args.disabled,
            )
            print(f"app {args.id} added to {apps_path(args.data_dir)}")
        elif args.apps_command == "delete":
            delete_app(args.data_dir, args.id)
            print(f"app {args.id} deleted")
        else:
            for app in stored_apps(args.data_dir):
                expired = str(app.expired) if app.expired is not None else "never"
                status = "enabled" if app.status else "disabled"
                print(f"{app.id}\t{app.name}\t{status}\texpired={expired}\t{app.desc}")
    except (AppError, OSError, ValueError, KeyError, ReplicatedStoreError) as exc:
        print(f"minibroker: error: {exc}", file=sys.stderr)
        return 1
    return 0
