"""Errors that stop a node from starting, with a message fit to show the operator as is."""

from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """The node cannot start (a corrupt data file, a plugin that fails to load, ...).

    The CLI prints the message and exits with status 1; nothing has been left running.
    """
