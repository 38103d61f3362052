"""What every console command of the project shares: one-line errors, never a traceback.

Why: a user who mistypes a flag, names a closed port or gives a wrong secret should read one
line saying so and get a non-zero exit status, as with mosquitto or emqx_ctl; a Python traceback
is for a bug report only, and ``--debug`` (accepted anywhere on the command line, by every
parser built from :class:`CliParser`) asks for it.

Exit statuses: 0 success, 1 a runtime error (cannot reach, cannot read, ...), 2 bad usage,
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["CliParser", "describe", "run_main"]

DEBUG_HELP = "on an unexpected error, show the Python traceback (for a bug report)"


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, and which takes ``--debug`` itself.

    Subparsers are built with the parent's class, so the whole tree behaves the same. The flag
    defaults to SUPPRESS: given before the verb, it is not reset by a subparser after it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def describe(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when it has none."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_main(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    dispatch: Callable[[argparse.Namespace], int],
    expected: tuple[type[BaseException], ...] = (OSError,),
) -> int:
    """Parse `argv` and run `dispatch`, turning any escaping exception into one stderr line.

    `expected` errors (a closed port, an unreadable file) are the user's to fix: the message is
    enough. Anything else is a bug: one line that says so, and the traceback with ``--debug``.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug = bool(getattr(args, "debug", False))
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except expected as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else "; rerun with --debug for the traceback"
        print(
            f"{prog}: error: unexpected {type(exc).__name__}: {describe(exc)} (a bug{hint})",
            file=sys.stderr,
        )
        return 1
