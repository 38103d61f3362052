"""auth_passwd: username/password authentication from a mosquitto password file.

The file is ``password_file`` at the top level of the config (mosquitto's key) or ``file`` in
``[plugins.auth_passwd]``; it is read when the plugin loads and again by `reload` (SIGHUP):
the new file is parsed fully and swapped in at once; a file that cannot be read or parsed is
logged as an error and the users loaded before are kept.
A client with a username is accepted with the right password and refused otherwise (unknown
user, wrong or missing password); a client without a username gets no answer from this plugin,
so ``allow_anonymous`` decides, as in mosquitto.
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

    def load(self, ctx: PluginContext) -> None:
        super().load(ctx)
        self.file = str(ctx.config.get("file") or ctx.node_config.password_file)
        if not self.file:
            raise PluginLoadError(
                "no password file: set password_file, or file in [plugins.auth_passwd]"
            )
        try:
            self.users = read_password_file(self.file)
        except PasswordFileError as exc:
            raise PluginLoadError(str(exc)) from None
        log.info("auth_passwd: %d users from %s", len(self.users), self.file)
        self.attach(ctx.broker.hooks.authenticate, self.authenticate)

    def reload(self) -> bool:
        """Read the password file again (SIGHUP); False, keeping the old users, on error."""
        try:
            users = read_password_file(self.file)
        except PasswordFileError as exc:
            log.error("auth_passwd: RELOAD FAILED, keeping the %d users loaded before: %s",
                      len(self.users), exc)  # fmt: skip
            return False
        self.users = users  # one assignment: a CONNECT sees the old or the new set, whole
        log.info("auth_passwd: reloaded %d users from %s", len(users), self.file)
        return True

    def authenticate(self, client: ClientInfo, password: bytes | None) -> bool | None:
        if client.username is None:
            return None  # anonymous: allow_anonymous decides
        encoded = self.users.get(client.username)
        if encoded is None or password is None:
            return False
        return verify_password(password, encoded)
