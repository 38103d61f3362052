"""API apps (EMQX's AppID/AppSecret): who may call `/api/v3`, and the `minibroker apps` command.

Three sources, later ones winning for the same id:
  1. the default app `admin`/`public` (EMQX 3.x's), unless `[management] default_app = false`;
  2. `[[management.apps]]` in the config file (secrets in clear, as the file is the operator's);
  3. `<data_dir>/apps.json`, written by `minibroker apps add|delete`, secrets hashed with
     PBKDF2-HMAC-SHA256 and a random salt (`pbkdf2_sha256$<iterations>$<salt>$<hash>`, base64).

The file is re-read when its modification time changes, so apps added with the CLI while the node
runs take effect without a restart. A disabled (`status` false) or expired (`expired` <= now)
app is refused. Secrets are compared in constant time; a verified hashed secret is remembered as
an HMAC under a per-process key, so PBKDF2 runs once per app and secret, not per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.server.config import ManagementApp

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

    def usable(self, now: float) -> bool:
        return self.status and (self.expired is None or now < self.expired)


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


def read_file(path: Path) -> list[App]:
    """The apps stored in `path` ([] when the file does not exist)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    data = json.loads(raw)
    apps: list[App] = []
    for item in data.get("apps", []):
        expired = item.get("expired")
        apps.append(
            App(
                id=str(item["id"]),
                name=str(item.get("name", "")),
                desc=str(item.get("desc", "")),
                status=bool(item.get("status", True)),
                expired=int(expired) if expired is not None else None,
                source="data_dir",
                secret_hash=str(item["secret_hash"]),
            )
        )
    return apps


def write_file(path: Path, apps: list[App]) -> None:
    """Replace the file atomically; it holds hashes only, yet is made readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [
        {
            "id": a.id,
            "secret_hash": a.secret_hash,
            "name": a.name,
            "desc": a.desc,
            "status": a.status,
            "expired": a.expired,
        }
        for a in apps
    ]
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
    apps = read_file(path)
    if any(a.id == app_id for a in apps):
        raise AppError(f"app {app_id!r} already exists in {path}; delete it first")
    app = App(app_id, name, desc, status, expired, "data_dir", None, hash_secret(secret))
    write_file(path, [*apps, app])
    return app


def delete_app(data_dir: str | os.PathLike[str], app_id: str) -> None:
    path = apps_path(data_dir)
    apps = read_file(path)
    kept = [a for a in apps if a.id != app_id]
    if len(kept) == len(apps):
        raise AppError(f"no app {app_id!r} in {path}")
    write_file(path, kept)


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
        self._file_apps: list[App] = []
        self._file_mtime: int | None = None
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}

    def _reload(self) -> None:
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._file_mtime:
            self._file_apps = read_file(self.path) if mtime is not None else []
            self._file_mtime = mtime

    def apps(self) -> dict[str, App]:
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
        for app in self._file_apps:
            out[app.id] = app
        return out

    def default_in_use(self) -> bool:
        """True while `admin`/`public` lets anyone in (warned about at start)."""
        app = self.apps().get(DEFAULT_APP_ID)
        return app is not None and app.source == "default"

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
