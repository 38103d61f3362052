"""README.md's shell examples as data, for the tests that run them (this module holds no tests).

Why: an example a user copies must work. The tests read the commands from the README itself
rather than keeping copies, so editing the README is enough to get the new example checked.

A *command* is one logical line of a ```sh / ```bash / ```shell block: `\\` continuations joined,
the trailing `# comment` removed (a `#` starts a comment only at the start of a word and outside
quotes, as in sh), blank lines skipped. `argv` is its `shlex` split. A `$ ` prompt is dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_LANGS = ("sh", "bash", "shell", "console")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line of README.md where the command starts
    text: str  # the command, comment removed, continuations joined
    argv: list[str]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def strip_comment(line: str) -> str:
    """`line` without its sh comment (`#` at a word start, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_blocks(path: Path = README) -> list[tuple[int, list[str]]]:
    """(line number of its first line, lines) of every fenced shell block."""
    blocks: list[tuple[int, list[str]]] = []
    inside: str | None = None  # the open block's language
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        fence = _FENCE.match(line.strip())
        if fence is not None:
            if inside is None:
                inside = fence.group(1) or "text"
                if inside in SHELL_LANGS:
                    blocks.append((number + 1, []))
            else:
                inside = None
        elif inside in SHELL_LANGS:
            blocks[-1][1].append(line)
    return blocks


def shell_commands(path: Path = README) -> list[Command]:
    """Every command of every shell block of the README, in order."""
    out: list[Command] = []
    for start, lines in shell_blocks(path):
        pending: list[str] = []
        first = start
        for offset, raw in enumerate(lines):
            line = raw.strip()
            if not pending:
                first = start + offset
                line = line.removeprefix("$ ")
            code = strip_comment(line)
            if code.endswith("\\"):
                pending.append(code[:-1].strip())
                continue
            text = " ".join(part for part in [*pending, code] if part)
            pending = []
            if text:
                out.append(Command(first, text, shlex.split(text)))
    return out


def curl_commands(path: Path = README) -> list[Command]:
    return [c for c in shell_commands(path) if c.argv and c.argv[0] == "curl"]
