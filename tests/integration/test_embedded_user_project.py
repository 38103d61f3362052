"""What a user does, tested: install minibroker into a fresh virtual environment, write the
README's "Testing your MQTT code" examples into an empty project, run pytest there.

pip installs a wheel of this tree into the environment (`--no-deps --no-index`: the
dependencies come from the system site-packages, nothing is downloaded), so the `pytest11` entry
point, the package data and the public imports are what an installed package gives. The wheel
is assembled here from pyproject.toml (packages, package data, scripts, entry points), because
the machine's setuptools may be older than the build backend pyproject.toml asks for and a
test does not download one. The subprocesses run without PYTHONPATH: they see the installed
copy only. Every subprocess has a time bound.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import re
import subprocess
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```", re.DOTALL)
#: pytest in the throwaway project (default: each test's own timeout via pytest-timeout).
PYTEST_TIMEOUT = 240

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PYTEST_TIMEOUT + 120)]


def readme_examples() -> dict[str, str]:
    """File name -> code of every `<!-- example: NAME -->` block of the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your MQTT code", 1)[1].split("\n## ", 1)[0]
    return {name: code for name, code in EXAMPLE.findall(section)}


def test_the_readme_has_the_examples_this_test_runs() -> None:
    examples = readme_examples()
    assert {"test_example_sync.py", "test_example_async.py", "run_embedded.py"} <= set(examples)
    for name, code in examples.items():
        compile(code, name, "exec")


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def build_wheel(out: Path) -> Path:
    """A wheel of this tree: what [tool.setuptools] and [project] in pyproject.toml declare."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, tool = meta["project"], meta["tool"]["setuptools"]
    name, version = project["name"], project["version"]
    include = tool["packages"]["find"]["include"]
    data = tool.get("package-data", {})
    files: dict[str, bytes] = {}
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        top = rel.parts[0]
        if not path.is_file() or not any(fnmatch.fnmatch(top, pat) for pat in include):
            continue
        if "__pycache__" in rel.parts or "node_modules" in rel.parts:
            continue
        inner = rel.relative_to(top).as_posix()
        if path.suffix == ".py" or any(fnmatch.fnmatch(inner, p) for p in data.get(top, [])):
            files[rel.as_posix()] = path.read_bytes()
    info = f"{name}-{version}.dist-info"
    requires = "".join(f"Requires-Dist: {dep}\n" for dep in project["dependencies"])
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}"
    ).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
    groups = {"console_scripts": project["scripts"], **project["entry-points"]}
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in groups.items()
    ).encode()
    record = []
    for rel, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(content)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, content in files.items():
            archive.writestr(rel, content)
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with minibroker installed by pip from a wheel: its python."""
    base = tmp_path_factory.mktemp("user")
    wheel = build_wheel(base)
    venv.create(base / "venv", system_site_packages=True, with_pip=False)
    python = base / "venv" / "bin" / "python"
    # the system's pip, run by the venv's interpreter, installs into the venv
    done = run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
               base, 180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    where = run([str(python), "-c", "import broker.embedded as m; print(m.__file__)"], base, 60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(base / "venv")), where.stdout
    return python


def outcome(output: str) -> dict[str, int]:
    """`3 passed, 1 failed in 2.1s` -> {"passed": 3, "failed": 1}."""
    last = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|errors)", last)}


def test_the_readme_examples_pass_in_a_fresh_project(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    examples = readme_examples()
    for name, code in examples.items():
        (project / name).write_text(code)
    # a failing test too: the fixtures must report failures, not hide them
    (project / "test_must_fail.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.mqtt_broker(max_qos_allowed=1)\n"
        "def test_wrong_expectation(mqtt_broker):\n"
        "    assert mqtt_broker.app.config.max_qos_allowed == 2\n"
    )
    tests = [n for n in examples if n.startswith("test_")]
    done = run(
        [str(installed), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60"],
        project,
        PYTEST_TIMEOUT,
    )
    output = done.stdout + done.stderr
    expected_passed = sum(
        len(re.findall(r"^(?:async )?def test_", code, re.MULTILINE)) for code in examples.values()
    )
    assert tests and expected_passed >= 5
    assert outcome(done.stdout) == {"passed": expected_passed, "failed": 1}, output
    assert "test_wrong_expectation" in done.stdout
    script = run([str(installed), "run_embedded.py"], project, 60)
    assert script.returncode == 0, script.stdout + script.stderr
    assert "MQTT mqtt://127.0.0.1:" in script.stdout and "from node 1" in script.stdout


def test_the_plugin_imports_no_broker_module_at_start_up(installed: Path, tmp_path: Path) -> None:
    """A suite that does not use the fixtures pays nothing: loading the plugin imports pytest
    only, not the broker, aiohttp or the cluster."""
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n"
        "def test_nothing_heavy_was_imported():\n"
        "    heavy = [m for m in ('broker.embedded', 'broker.app', 'aiohttp', 'cluster')\n"
        "             if m in sys.modules]\n"
        "    assert heavy == []\n"
        "    assert 'broker.pytest_plugin' in sys.modules\n"
    )
    done = run([str(installed), "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path, 120)
    assert outcome(done.stdout) == {"passed": 1}, done.stdout + done.stderr
