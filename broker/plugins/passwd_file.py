"""mosquitto password files: ``username:$7$<iterations>$<salt>$<hash>`` lines.

The `$7$` format is what ``mosquitto_passwd`` 2.x writes by default: PBKDF2-HMAC-SHA512 with
101 iterations, a 12-byte random salt and a 64-byte derived key, both in standard base64 (with
padding). The older `$6$` format (``mosquitto_passwd -H sha512``: one SHA-512 over the password
followed by the salt) is verified too, and never written. Blank lines and lines starting with
``#`` are kept as they are when the file is rewritten.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from typing import Any

from broker.server.datafiles import write_atomic

__all__ = [
    "PasswordFileError",
    "add_passwd_parser",
    "delete_user",
    "hash_password",
    "passwd_main",
    "read_password_file",
    "set_password",
    "verify_password",
]

PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64


class PasswordFileError(Exception):
    """A password file that cannot be read or has a malformed line."""


def hash_password(
    password: bytes | str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """The `$7$` encoding of `password`, as mosquitto_passwd writes it."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: bytes | str, encoded: str) -> bool:
    """Does `password` match a `$7$` or `$6$` encoding? False for anything malformed."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
            iterations = int(parts[2])
            if not 1 <= iterations <= 10_000_000:
                return False
            salt, expected = _unb64(parts[3]), _unb64(parts[4])
            if not expected:
                return False
            actual = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, len(expected))
            return hmac.compare_digest(actual, expected)
        if len(parts) == 4 and parts[0] == "" and parts[1] == "6":
            salt, expected = _unb64(parts[2]), _unb64(parts[3])
            actual = hashlib.sha512(password + salt).digest()
            return hmac.compare_digest(actual, expected)
    except (ValueError, binascii.Error):
        return False
    return False


def is_hashed(encoded: str) -> bool:
    return encoded.startswith(("$7$", "$6$"))


def read_password_file(path: str) -> dict[str, str]:
    """username -> encoded password. Raises PasswordFileError naming the file and line."""
    users: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path), 1):
        entry = _parse(line)
        if entry is None:
            continue
        username, encoded = entry
        if not username:
            raise PasswordFileError(f"{path}:{number}: empty username")
        if not is_hashed(encoded):
            raise PasswordFileError(
                f"{path}:{number}: the password of {username!r} is not hashed "
                "(expected $7$ or $6$; set it with `minibroker passwd` or mosquitto_passwd -U)"
            )
        users[username] = encoded
    return users


def set_password(path: str, username: str, password: bytes | str) -> bool:
    """Create or update `username`'s entry (the file is created if missing).

    Returns True if the user existed. Other lines keep their order and text.
    """
    _check_username(username)
    line = f"{username}:{hash_password(password)}"
    lines = _read_lines(path) if os.path.exists(path) else []
    existed = False
    out: list[str] = []
    for old in lines:
        entry = _parse(old)
        if entry is not None and entry[0] == username:
            if not existed:
                out.append(line)
            existed = True
        else:
            out.append(old)
    if not existed:
        out.append(line)
    _write_lines(path, out)
    return existed


def delete_user(path: str, username: str) -> bool:
    """Remove `username`'s entry; False if the file has no such user."""
    lines = _read_lines(path)
    out = [old for old in lines if (_parse(old) or ("", ""))[0] != username]
    if len(out) == len(lines):
        return False
    _write_lines(path, out)
    return True


def _check_username(username: str) -> None:
    if not username or ":" in username or any(c in username for c in "\r\n"):
        raise PasswordFileError(f"invalid username {username!r}: must be non-empty, without ':'")


def _parse(line: str) -> tuple[str, str] | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    username, sep, encoded = stripped.partition(":")
    if not sep:
        return (username, "")
    return username, encoded


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except OSError as exc:
        problem = exc.strerror or exc
        raise PasswordFileError(f"{path}: cannot read password file: {problem}") from None
    except UnicodeDecodeError as exc:
        raise PasswordFileError(f"{path}: not valid UTF-8 at byte {exc.start}") from None


def _write_lines(path: str, lines: list[str]) -> None:
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# -- `minibroker passwd FILE USER [-b PASSWORD] [-D]` ------------------------------------------


def add_passwd_parser(sub: Any) -> None:
    """Add the ``passwd`` subcommand to the CLI's subparsers."""
    parser = sub.add_parser(
        "passwd",
        help="create, update or delete a user in a password file (mosquitto_passwd format)",
    )
    parser.add_argument("file", metavar="FILE", help="password file (created if missing)")
    parser.add_argument("user", metavar="USER", help="username")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-b", dest="password", metavar="PASSWORD", help="password on the command line (batch)"
    )
    group.add_argument("-D", dest="delete", action="store_true", help="delete the user")


def passwd_main(args: argparse.Namespace) -> int:
    """Run ``minibroker passwd``; 0 on success, 1 on error (message on stderr)."""
    try:
        if args.delete:
            if not delete_user(args.file, args.user):
                print(f"minibroker: error: user {args.user!r} not in {args.file}", file=sys.stderr)
                return 1
            return 0
        password = args.password
        if password is None:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Reenter password: "):
                print("minibroker: error: passwords do not match", file=sys.stderr)
                return 1
        set_password(args.file, args.user, password)
    except (PasswordFileError, OSError) as exc:
        print(f"minibroker: error: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return 1
    return 0
