"""The READMEs say what is true: the newest benchmark results are the ones named as the latest,
and statements that went stale once (issue 16) do not come back."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
#: `compare-2026-11-25-f.md` -> kind "compare", date "2026-11-25", run "f" (the first run: "").
RESULT_NAME = re.compile(r"^(compare|cluster-scale)-(\d{4}-\d{2}-\d{2})(?:-([a-z]))?\.md$")


def newest_results() -> dict[str, str]:
    """Kind -> the file name of its newest results (latest date, then latest run letter)."""
    newest: dict[str, tuple[str, str, str]] = {}
    for path in RESULTS.iterdir():
        match = RESULT_NAME.match(path.name)
        if match is None:
            continue
        kind, date, run = match.group(1), match.group(2), match.group(3) or ""
        if kind not in newest or (date, run) > newest[kind][:2]:
            newest[kind] = (date, run, path.name)
    return {kind: name for kind, (_, _, name) in newest.items()}


def test_the_result_names_sort_as_runs() -> None:
    assert RESULT_NAME.match("compare-2026-11-25.md")
    assert RESULT_NAME.match("compare-2026-11-25-b.md").group(3) == "b"  # type: ignore[union-attr]
    assert ("2026-11-25", "") < ("2026-11-25", "b") < ("2026-11-26", "")


def test_benchmarks_readme_names_the_newest_results_as_the_latest() -> None:
    newest = newest_results()
    assert set(newest) == {"compare", "cluster-scale"}
    text = (ROOT / "benchmarks" / "README.md").read_text()
    latest = text.split("The latest:", 1)[1].split("Earlier runs", 1)[0]
    for name in newest.values():
        assert f"results/{name}" in latest, f"benchmarks/README.md: the latest is {name}"
        charts = "charts-" + name.removeprefix("compare-").removesuffix(".md")
        assert f"results/{charts}/" in latest, f"benchmarks/README.md: charts of {name}"


def test_the_performance_section_cites_the_newest_results() -> None:
    text = (ROOT / "README.md").read_text()
    performance = text.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    for name in newest_results().values():
        assert f"benchmarks/results/{name}" in performance, f"README Performance: cite {name}"


#: Phrases that were true once and are not any more, with what replaced them.
STALE = {
    "no SIGHUP yet": "SIGHUP re-reads the password and ACL files (broker.app.NodeApp.reload)",
    "being built on this runtime": "shared groups and takeover are cluster-wide",
    "served per node": "a shared group gives each message to one member in the whole cluster",
    "client id is unique per node": "a client id is unique in the cluster (cluster/takeover.py)",
    "the takeover RPC each CONNECT makes": "a CONNECT asks its id's owner in the registry",
}


def test_no_stale_statement_in_the_readme() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())  # phrases may wrap lines
    found = {phrase: now for phrase, now in STALE.items() if phrase in text}
    assert not found, f"README.md says what is no longer true: {found}"
