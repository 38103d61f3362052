"""auth_clientid and auth_username: passwords per client id / per username, managed over REST.

As EMQX 3.x's emqx_auth_clientid and emqx_auth_username: the credentials live in a table that
every node of the cluster holds (here a `broker.core.replicated` table of the same name,
persisted in the data directory and exchanged on join) and that the REST API edits
(`/api/v3/auth_clientid`, `/api/v3/auth_username`, see `management.handlers_auth`). The table
exists whether or not the plugin is loaded; loading the plugin makes CONNECT consult it.

The decision at CONNECT, as EMQX's `check/3`:
  * the client id (username) is not in the table, or the client sent no username: no opinion
    (`None`): the next authentication plugin decides, or ``allow_anonymous``;
  * it is in the table and the password matches: accepted;
  * it is in the table and the password is wrong: refused (CONNACK 0x86 / 3.1.1 code 4).
    A missing password is refused too (EMQX 3.2 passed it on to the next plugin; a known id
    must not become "anonymous" by leaving its password out).
Passwords are stored as `$7$` PBKDF2-SHA512, the encoding of `minibroker passwd`
(`broker.plugins.passwd_file`). Both plugins put their check at the front of the chain, so a
listed client is decided by its table even when auth_passwd (which refuses every username its
file lacks) is loaded too; unlisted clients go on to auth_passwd as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from broker.core.hooks import ClientInfo
from broker.core.replicated import ReplicatedTable
from broker.plugins.base import Plugin, PluginContext
from broker.plugins.passwd_file import hash_password, verify_password

__all__ = ["TABLE_AUTH", "AuthClientidPlugin", "AuthUsernamePlugin", "TableAuth", "credential"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TableAuth:
    """What the REST API needs to know about one of these plugins."""

    plugin: str  # the plugin name, also the table name and the path segment
    field: str  # the body field / path parameter that names an entry (EMQX's)


TABLE_AUTH: dict[str, TableAuth] = {
    "auth_clientid": TableAuth("auth_clientid", "clientid"),
    "auth_username": TableAuth("auth_username", "username"),
}


def credential(password: str) -> dict[str, str]:
    """The stored record of a password: its `$7$` hash (salted; the same on every node)."""
    return {"password": hash_password(password)}


class _TableAuthPlugin(Plugin):
    config_keys: ClassVar[frozenset[str] | None] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.table: ReplicatedTable | None = None

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.table = ctx.broker.replicated.table(self.name)
        log.info("%s: %d entries", self.name, len(self.table))
        self.attach(ctx.broker.hooks.authenticate, self.authenticate, first=True)

    def key(self, client: ClientInfo) -> str | None:
        raise NotImplementedError

    def authenticate(self, client: ClientInfo, password: bytes | None) -> bool | None:
        key = self.key(client)
        if key is None or self.table is None:
            return None
        record = self.table.get(key)
        if record is None:
            return None  # not ours: the next plugin, or allow_anonymous
        encoded = record.get("password")
        if password is None or not isinstance(encoded, str):
            return False
        return verify_password(password, encoded)


class AuthClientidPlugin(_TableAuthPlugin):
    name = "auth_clientid"
    description = "ClientId Authentication Module (passwords per client id, REST-managed)"

    def key(self, client: ClientInfo) -> str | None:
        return client.client_id or None


class AuthUsernamePlugin(_TableAuthPlugin):
    name = "auth_username"
    description = "Username password Authentication Module (REST-managed)"

    def key(self, client: ClientInfo) -> str | None:
        return client.username or None
