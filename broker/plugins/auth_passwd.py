"""auth_passwd: username/password authentication from a mosquitto password file.

The file is ``password_file`` at the top level of the config (mosquitto's key) or ``file`` in
``[plugins.auth_passwd]``; it is read when the plugin loads and again by `reload` (SIGHUP):
the new file is parsed fully and swapped in at once; a file that cannot be read or parsed is
logged as an error and the users loaded before are kept.
A client with a username is accepted with the right password and refused otherwise (unknown
user, wrong or missing password); a client without a username gets no answer from this plugin,
so ``allow_anonymous`` decides, as in mosquitto.

Per listener (mosquitto's per_listener_settings): ``password_file`` in a ``[listener.*]``
section is the only file checked for the clients of that listener; clients of the other
listeners are checked against the global file (or, with none, get no answer). SIGHUP re-reads
every file; if one fails, all the users loaded before are kept.
"""

from __future__ import annotations

import logging

from broker.core.hooks import ClientInfo
from broker.plugins.base import Plugin, PluginContext, PluginLoadError
from broker.plugins.passwd_file import PasswordFileError, read_password_file, verify_password

__all__ = ["AuthPasswdPlugin"]

log = logging.getLogger(__name__)


class AuthPasswdPlugin(Plugin):
    name = "auth_passwd"
    description = "Authentication with a mosquitto password file ($7$ PBKDF2-SHA512)"

    def __init__(self) -> None:
        super().__init__()
        self.file = ""
        self.users: dict[str, str] = {}
        #: listener name (tcp, ws, tls, wss) -> its own password_file, and that file's users
        self.listener_files: dict[str, str] = {}
        self.listener_users: dict[str, dict[str, str]] = {}

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.file = str(ctx.config.get("file") or ctx.node_config.password_file)
        self.listener_files = ctx.node_config.listener_password_files()
        if not self.file and not self.listener_files:
            raise PluginLoadError(
                "no password file: set password_file, or file in [plugins.auth_passwd]"
            )
        try:
            self.users, self.listener_users = self._read_all()
        except PasswordFileError as exc:
            raise PluginLoadError(str(exc)) from None
        if self.file:
            log.info("auth_passwd: %d users from %s", len(self.users), self.file)
        for listener, file in self.listener_files.items():
            log.info("auth_passwd: %d users from %s for listener %s",
                     len(self.listener_users[listener]), file, listener)  # fmt: skip
        self.attach(ctx.broker.hooks.authenticate, self.authenticate)

    def _read_all(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """Every file read and parsed (the global one when set, then each listener's)."""
        users = read_password_file(self.file) if self.file else {}
        by_listener = {name: read_password_file(file) for name, file in self.listener_files.items()}
        return users, by_listener

    def reload(self) -> bool:
        """Read every password file again (SIGHUP); False, keeping the old users of every file,
        when one of them cannot be read or parsed."""
        try:
            users, by_listener = self._read_all()
        except PasswordFileError as exc:
            log.error("auth_passwd: RELOAD FAILED, keeping the %d users loaded before: %s",
                      len(self.users), exc)  # fmt: skip
            return False
        # Assignments with no await between them: a CONNECT sees the old or the new sets, whole.
        self.users, self.listener_users = users, by_listener
        if self.file:
            log.info("auth_passwd: reloaded %d users from %s", len(users), self.file)
        for listener, file in self.listener_files.items():
            log.info("auth_passwd: reloaded %d users from %s for listener %s",
                     len(by_listener[listener]), file, listener)  # fmt: skip
        return True

    def authenticate(self, client: ClientInfo, password: bytes | None) -> bool | None:
        if client.username is None:
            return None  # anonymous: allow_anonymous decides
        users = self.listener_users.get(client.listener)
        if users is None:  # no file of its own: the global one, when there is one
            if not self.file:
                return None
            users = self.users
        encoded = users.get(client.username)
        if encoded is None or password is None:
            return False
        return verify_password(password, encoded)
