"""Files in the node's data directory: written atomically, read with clear errors.

A crash or power cut in the middle of a save must leave either the old file or the new one,
never half of each: the new contents go to a temporary file in the same directory, which is
flushed and fsynced, then renamed over the old name (atomic on POSIX), and the directory is
fsynced so that the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically (temp file + fsync + rename + directory fsync).

    The file keeps the permissions of the one it replaces; a new file is private (0600).
    """
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json_atomic(path: str, value: object) -> None:
    """`write_atomic` of `value` as indented UTF-8 JSON with a final newline."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
