"""The shell commands of a Markdown file's fenced code blocks, for tests that run them.

Why: a README whose commands are run by the suite cannot drift from the code. The tests parse
the file each time rather than copying its commands.

Blocks fenced as ``sh``, ``bash``, ``shell`` hold one command per line (a trailing ``\\``
continues it; ``#`` comments are dropped). ``console`` blocks are transcripts: a command is a
line after the ``$ `` prompt, and the lines up to the next prompt are its output.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "README",
    "SHELL_LANGUAGES",
    "ShellCommand",
    "curl_commands",
    "shell_commands",
    "strip_comment",
]

README = Path(__file__).resolve().parents[1] / "README.md"

SHELL_LANGUAGES = ("sh", "bash", "shell", "console")
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class ShellCommand:
    text: str  # the command, continuation lines joined, comment dropped
    line: int  # 1-based line of the file where it starts
    language: str  # the block's fence language
    output: tuple[str, ...] = ()  # console blocks: the transcript's output lines
    block: int = 0  # line of the block's first content line: commands of a block go together

    @property
    def where(self) -> str:
        return f"line {self.line}"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a `#` outside quotes after a blank), stripped."""
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


def _blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first content line number, lines) of every fenced block."""
    blocks: list[tuple[str, int, list[str]]] = []
    fence = ""
    language = ""
    start = 0
    lines: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if not fence:
            if match:
                fence, language, start, lines = match.group(1), match.group(2), number + 1, []
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((language.lower(), start, lines))
            fence = ""
        else:
            lines.append(line)
    return blocks


def shell_commands(path: Path | str) -> list[ShellCommand]:
    """Every shell command of the file's sh/bash/shell/console blocks, in order."""
    found: list[ShellCommand] = []
    for language, start, lines in _blocks(Path(path).read_text(encoding="utf-8")):
        if language not in SHELL_LANGUAGES:
            continue
        if language == "console":
            found.extend(_transcript(lines, start))  # block= is set there
            continue
        pending = ""
        first = 0
        for number, raw in enumerate(lines, start=start):
            line = strip_comment(raw)
            if not pending:
                first = number
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            command = (pending + line.strip()).strip()
            pending = ""
            if command:
                found.append(ShellCommand(command, first, language, block=start))
    return found


def _transcript(lines: list[str], start: int) -> list[ShellCommand]:
    found: list[ShellCommand] = []
    current: tuple[str, int] | None = None
    output: list[str] = []
    for number, line in enumerate(lines, start=start):
        if line.startswith("$ "):
            if current is not None:
                found.append(ShellCommand(current[0], current[1], "console", tuple(output), start))
            current, output = (strip_comment(line[2:]).strip(), number), []
        elif current is not None:
            output.append(line)
    if current is not None:
        found.append(ShellCommand(current[0], current[1], "console", tuple(output), start))
    return found


def curl_commands(path: Path | str = README) -> list[ShellCommand]:
    """The README's `curl` examples (run by tests/integration/test_readme_curl.py)."""
    return [c for c in shell_commands(path) if c.argv[:1] == ["curl"]]
