"""The settings are declared once: the README, the loader and the core all agree with the schema."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from broker import cli
from broker.core.enhanced_auth import scram_credential
from broker.core.settings import CoreOptions, Settings
from broker.server.config import MASK, BrokerConfig, parse_config, running_config
from broker.server.config.reference import BEGIN, END, readme_section, render_reference
from broker.server.config.schema import TOP, Key, keys
from broker.server.node import settings_from_config
from cluster.runtime import ClusterConfig
from management.common import ApiSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
REFERENCE = readme_section(README)

_TITLE = re.compile(r"^\*\*(?:Top level|`\[\[?([\w.]+)\]\]?`.*)\*\*$")
_ROW = re.compile(r"^\| `(\w+)` \| [^|]+ \| (`(?:[^`]*)`|\(required\)|\(unset\)) \|")


def _documented() -> dict[str, dict[str, str]]:
    """The README's reference read back: table -> key -> the default as written."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in REFERENCE.splitlines():
        title = _TITLE.match(line)
        if title:
            current = tables.setdefault(title[1] or TOP, {})
            continue
        row = _ROW.match(line)
        if row and current is not None:
            assert row[1] not in current, f"{row[1]} documented twice"
            current[row[1]] = row[2].strip("`")
    return tables


def _all_keys() -> list[Key]:
    return [key for table in keys().values() for key in table.values()]


def test_readme_reference_is_the_generated_one() -> None:
    assert BEGIN in README and END in README
    assert render_reference() == REFERENCE, (
        "README's configuration reference is stale: replace it with `minibroker config-reference`"
    )


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config-reference"]) == 0
    assert capsys.readouterr().out == render_reference()


def test_every_setting_documented_with_its_real_default() -> None:
    documented = _documented()
    assert set(documented) == set(keys()), "a table is missing or documented without existing"
    for table, table_keys in keys().items():
        assert set(documented[table]) == set(table_keys), f"[{table}]: keys differ"
        for name, key in table_keys.items():
            written = documented[table][name]
            if key.default is dataclasses.MISSING:
                assert written == "(required)", f"'{name}' in [{table}]"
            elif key.default is None:
                assert written == "(unset)", f"'{name}' in [{table}]"
            else:  # the documented default, read as TOML, is the value the code starts with
                value = tomllib.loads(f"v = {written}")["v"]
                assert value == key.default, f"'{name}' in [{table}]: {written} != {key.default!r}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + "}"
    return repr(value)


def _written_defaults() -> list[Key]:
    """The keys whose default can be written in a file (not unset, required or a table list;
    a path or URL that must not be empty is unset when "")."""
    return [
        key
        for key in _all_keys()
        if key.default is not None
        and key.default is not dataclasses.MISSING
        and key.spec.kind != "apps"
        and not (key.default == "" and key.spec.kind in ("nonempty", "url"))
    ]


@pytest.mark.parametrize("key", _written_defaults(), ids=lambda k: f"{k.table}:{k.key}")
def test_every_default_passes_its_own_check(key: Key) -> None:
    """Writing a key's default in the file loads the same value: each declaration has a check,
    and no default lies outside its own range."""
    line = f"{key.key} = {_toml(key.default)}"
    if key.table == "management.apps":
        text = f'[[management.apps]]\nid = "a"\nsecret = "b"\n{line}\n'
        cfg = parse_config(text)
        assert getattr(cfg.management.apps[0], key.attr) == key.default
        return
    text = line if key.table == TOP else f"[{key.table}]\n{line}\n"
    if key.table == "plugins.web_hook" and key.key == "enabled":
        text += 'url = "http://127.0.0.1:1/"\n'
    cfg = parse_config(text)
    if key.table.startswith("plugins."):
        loaded = cfg.plugins[key.table.removeprefix("plugins.")][key.key]
    else:
        loaded = getattr(getattr(cfg, key.holder) if key.holder else cfg, key.attr)
    assert loaded == key.default


def test_core_settings_and_config_start_from_the_same_defaults() -> None:
    """The drift this schema ended: max_topic_levels was 0 in Settings and 128 in the config."""
    assert settings_from_config(BrokerConfig()) == Settings()
    assert Settings().max_topic_levels == 128 and Settings().max_topic_length == 65535
    for field in dataclasses.fields(CoreOptions):
        assert getattr(Settings(), field.name) == getattr(BrokerConfig(), field.name)


def test_secrets_are_marked() -> None:
    secret = {(key.table, key.key) for key in _all_keys() if key.spec.secret}
    assert secret == {
        ("node", "cookie"),
        ("management.apps", "secret"),
        (TOP, "scram_credentials"),
    }


def _toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", README, flags=re.S | re.M)


@pytest.mark.parametrize("block", _toml_blocks(), ids=lambda b: b.splitlines()[0])
def test_readme_examples_load(block: str) -> None:
    """Every example file in the README uses keys that exist, with values they accept."""
    placeholder = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
    if placeholder in block:  # explained next to it; a real credential has that shape
        block = block.replace(placeholder, scram_credential("pw", salt=b"salt", iterations=4096))
    parse_config(block)


_PROSE_DEFAULT = re.compile(r"^\| `(\w+) = ([^`]+)` (?:\([^)]*\) )?\| (top level|each `\[listener)")
_FEATURE_DEFAULT = re.compile(r"`(\w+)` \((\d+|true|false|\"\")[);]")


def test_defaults_quoted_elsewhere_in_the_readme() -> None:
    """The limits and MQTT 5.0 tables quote defaults too; they must be the real ones."""
    checked = 0
    for line in README.splitlines():
        row = _PROSE_DEFAULT.match(line)
        if row:
            table = TOP if row[3] == "top level" else "listener.tcp"
            value = tomllib.loads(f"v = {row[2]}")["v"]
            assert keys()[table][row[1]].default == value, line
            checked += 1
        for name, written in _FEATURE_DEFAULT.findall(line):
            if name in keys()[TOP]:
                assert keys()[TOP][name].default == tomllib.loads(f"v = {written}")["v"], line
                checked += 1
    assert checked >= 20


def test_running_config_masks_secrets_and_shows_every_key() -> None:
    alice = scram_credential("pw", salt=b"salt", iterations=4096)
    cfg = parse_config(
        f'[node]\ncookie = "c00kie"\n[scram_credentials]\nalice = "{alice}"\n'
        '[[management.apps]]\nid = "ops"\nsecret = "s3cret"\n'
        "[plugins.presence]\nenabled = true\n[plugins.mine]\nlevel = 3\n"
        '[plugins.web_hook]\nurl = "http://hook:hook-pass@127.0.0.1:9/x"\n'
    )
    shown = running_config(cfg)
    assert json.loads(json.dumps(shown)) == shown  # plain data, fit for a JSON answer
    for table, table_keys in keys().items():
        if table != "management.apps" and not table.startswith("plugins."):
            assert set(shown[table]) == set(table_keys)
    assert shown["node"]["cookie"] == MASK and shown["node"]["name"] == cfg.node_name
    assert shown[TOP]["scram_credentials"] == {"alice": MASK}
    assert shown["management"]["apps"][0]["secret"] == MASK
    assert shown["management"]["apps"][0]["id"] == "ops"
    assert shown["plugins.presence"] == {"enabled": True, "qos": 0}
    assert shown["plugins.mine"] == {"level": 3}
    assert shown["plugins.web_hook"]["url"] == f"http://hook:{MASK}@127.0.0.1:9/x"  # URL password
    assert "c00kie" not in json.dumps(shown) and "s3cret" not in json.dumps(shown)
    assert alice not in json.dumps(shown)
    unmasked = running_config(cfg, mask_secrets=False)
    assert unmasked["node"]["cookie"] == "c00kie"
    assert unmasked["management"]["apps"][0]["secret"] == "s3cret"
    assert unmasked["plugins.web_hook"]["url"] == "http://hook:hook-pass@127.0.0.1:9/x"


def test_defaults_repeated_outside_the_config_agree() -> None:
    """Two rooms below the config keep their own defaults for callers without a file (the
    management app in tests, the cluster runtime); they must be the declared ones."""
    management = BrokerConfig().management
    for field in dataclasses.fields(ApiSettings):
        assert getattr(ApiSettings(), field.name) == getattr(management, field.name), field.name
    dns = ClusterConfig().dns_refresh_interval
    assert dns == keys()["cluster"]["dns_refresh_interval"].default
