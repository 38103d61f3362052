"""API apps (EMQX's AppID/AppSecret): who may call `/api/v3`, and the `minibroker apps` command.

Three sources, later ones winning for the same id:
  1. the default app `admin`/`public` (EMQX 3.x's), unless `[management] default_app = false`;
  2. `[[management.apps]]` in the config file (secrets in clear, as the file is the operator's);
  3. `<data_dir>/apps.json`, written by the `/apps` API and `minibroker apps add|delete`, secrets
     hashed with PBKDF2-HMAC-SHA256 and a random salt (`pbkdf2_sha256$<iterations>$<salt>$<hash>`,
     base64). A deleted app stays there as a tombstone (`deleted`), which also hides a default
     or config app of that id.

Replication: every record carries `updated_at`; `AppStore.apply` keeps the newer of two records
of an id (a tombstone wins a tie), so applying the same records in any order on any node ends
in the same table. The API writes a change on every running node at once (`app_put`), and
`cluster.replicas` pulls the records (`dump`/`merge`) from every node that (re)joins.

The file is re-read when its modification time changes, so apps added with the CLI while the node
runs take effect without a restart (the CLI edits that node's file only). A disabled (`status`
false) or expired (`expired` <= now) app is refused. Secrets are compared in constant time; a
verified hashed secret is remembered as an HMAC under a per-process key, so PBKDF2 runs once per
app and secret, not per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
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

from broker.server.config import ManagementApp

log = logging.getLogger(__name__)

DEFAULT_APP_ID = "admin"
DEFAULT_APP_SECRET = "public"
APPS_FILE = "apps.json"
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
    source: str = "config"  # "default" | "config" | "data_dir"
    secret: str | None = None  # in clear (default and config apps)
    secret_hash: str | None = None  # hashed (apps.json)
    updated_at: float = 0.0  # Unix seconds of the last change (data_dir records)
    deleted: bool = False  # a tombstone (data_dir records)

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

    def record(self) -> dict[str, Any]:
        """The stored and replicated form (apps.json row, `app_put` argument)."""
        return {
            "id": self.id,
            "secret_hash": self.secret_hash,
            "name": self.name,
            "desc": self.desc,
            "status": self.status,
            "expired": self.expired,
            "updated_at": self.updated_at,
            "deleted": self.deleted,
        }

    def newer_than(self, other: App) -> bool:
        """Last writer wins; a tombstone wins a tie; then the hash, so every node agrees."""
        mine = (self.updated_at, self.deleted, self.secret_hash or "")
        theirs = (other.updated_at, other.deleted, other.secret_hash or "")
        return mine > theirs


def app_from_record(item: Any) -> App:
    """An App from its stored or replicated form; ValueError/KeyError/TypeError if malformed."""
    if not isinstance(item, dict):
        raise TypeError("an app record must be an object")
    app_id = item["id"]
    deleted = bool(item.get("deleted", False))
    secret_hash = item.get("secret_hash")
    expired = item.get("expired")
    updated_at = item.get("updated_at", 0.0)
    if not isinstance(app_id, str) or not app_id:
        raise ValueError("an app id must be a non-empty string")
    if not deleted and not isinstance(secret_hash, str):
        raise ValueError(f"app {app_id!r} has no secret_hash")
    if isinstance(updated_at, bool) or not isinstance(updated_at, int | float):
        raise ValueError(f"app {app_id!r}: updated_at must be a number")
    return App(
        id=app_id,
        name=str(item.get("name", "")),
        desc=str(item.get("desc", "")),
        status=bool(item.get("status", True)),
        expired=int(expired) if expired is not None else None,
        source="data_dir",
        secret_hash=str(secret_hash) if isinstance(secret_hash, str) else None,
        updated_at=float(updated_at),
        deleted=deleted,
    )


def tombstone(app_id: str, now: float) -> App:
    return App(app_id, source="data_dir", status=False, updated_at=now, deleted=True)


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


# -- the apps.json file --------------------------------------------------------------------------


def apps_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / APPS_FILE


def read_records(path: Path) -> list[App]:
    """Every record stored in `path`, tombstones included ([] when there is no file)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    data = json.loads(raw)
    return [app_from_record(item) for item in data.get("apps", [])]


def read_file(path: Path) -> list[App]:
    """The apps stored in `path` (not the deleted ones)."""
    return [app for app in read_records(path) if not app.deleted]


def write_file(path: Path, apps: list[App]) -> None:
    """Replace the file atomically; it holds hashes only, yet is made readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [a.record() for a in apps]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"apps": rows}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


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
    path = apps_path(data_dir)
    records = read_records(path)
    if any(a.id == app_id and not a.deleted for a in records):
        raise AppError(f"app {app_id!r} already exists in {path}; delete it first")
    app = make_app(app_id, secret, name=name, desc=desc, status=status, expired=expired)
    write_file(path, [*(a for a in records if a.id != app_id), app])
    return app


def delete_app(data_dir: str | os.PathLike[str], app_id: str) -> None:
    """Replace the app by a tombstone (so that a peer's older copy cannot bring it back)."""
    path = apps_path(data_dir)
    records = read_records(path)
    if not any(a.id == app_id and not a.deleted for a in records):
        raise AppError(f"no app {app_id!r} in {path}")
    write_file(path, [a if a.id != app_id else tombstone(app_id, time.time()) for a in records])


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
    """The effective apps of a node (default, config, data dir) and Basic-auth checks."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        configured: list[ManagementApp] | None = None,
        default_app: bool = True,
    ) -> None:
        self.path = apps_path(data_dir)
        self.configured = list(configured or [])
        self.default_app = default_app
        self._records: dict[str, App] = {}
        self._file_mtime: int | None = None
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self.save_errors = 0

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _reload(self) -> None:
        mtime = self._mtime()
        if mtime != self._file_mtime:
            records = read_records(self.path) if mtime is not None else []
            self._records = {app.id: app for app in records}
            self._file_mtime = mtime

    def apps(self) -> dict[str, App]:
        """The apps in force: the data dir's records (tombstones remove) over config, default."""
        self._reload()
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
        for app in self._records.values():
            if app.deleted:
                out.pop(app.id, None)
            else:
                out[app.id] = app
        return out

    def default_in_use(self) -> bool:
        """True while `admin`/`public` lets anyone in (warned about at start)."""
        app = self.apps().get(DEFAULT_APP_ID)
        return app is not None and app.source == "default"

    # -- changes (the `/apps` API) and replication -----------------------------------------

    def apply(self, app: App) -> bool:
        """Store `app` (a record or a tombstone) unless this node has a newer one of its id.

        Idempotent and order-free (see the module docstring); persisted before it returns,
        and in force at once (the next request authenticates against it). True if it changed.
        """
        self._reload()
        current = self._records.get(app.id)
        if current is not None and not app.newer_than(current):
            return False
        stored = dataclasses.replace(app, source="data_dir", secret=None)
        self._records = {**self._records, app.id: stored}
        self._verified.pop(app.id, None)
        try:
            write_file(self.path, list(self._records.values()))
        except OSError as exc:  # in force in memory all the same (a disabled app stays refused)
            self.save_errors += 1
            log.error("cannot save the API apps to %s: %s", self.path, exc)
        else:
            self._file_mtime = self._mtime()
        return True

    def dump(self) -> list[dict[str, Any]]:
        """Every data_dir record, tombstones included (what a peer pulls)."""
        self._reload()
        return [app.record() for app in self._records.values()]

    def merge(self, records: Any) -> int:
        """Apply the records a peer sent; returns how many changed this node's table."""
        if not isinstance(records, list):
            return 0
        changed = 0
        for item in records:
            try:
                app = app_from_record(item)
            except (KeyError, TypeError, ValueError):
                continue
            changed += self.apply(app)
        return changed

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
            for app in read_file(apps_path(args.data_dir)):
                expired = str(app.expired) if app.expired is not None else "never"
                status = "enabled" if app.status else "disabled"
                print(f"{app.id}\t{app.name}\t{status}\texpired={expired}\t{app.desc}")
    except (AppError, OSError, ValueError, KeyError) as exc:
        print(f"minibroker: error: {exc}", file=sys.stderr)
        return 1
    return 0
