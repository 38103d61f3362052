"""Configuration loading: defaults, a full file, every kind of error, command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.server.config import (
    BrokerConfig,
    ConfigError,
    ListenerConfig,
    ManagementApp,
    ManagementConfig,
    apply_overrides,
    load_config,
    parse_config,
    validate_host_port,
)

FULL = """
allow_anonymous = false
password_file = "/etc/minibroker/passwd"
acl_file = "/etc/minibroker/acl"
max_inflight_messages = 10
max_queued_messages = 500
max_packet_size = 65536
max_keepalive = 600
sys_interval = 2.5
persistence = true
session_expiry_interval = 60
retain_available = false
max_connections = 100
shared_subscription_strategy = "hash_clientid"
max_outgoing_buffer = 1024

[node]
name = "b1@10.0.0.1"
data_dir = "/var/lib/minibroker"
cookie = "s3cret"

[listener.tcp]
bind = "0.0.0.0"
port = 11883
enabled = true

[listener.ws]
bind = "::"
port = 18083
path = "/ws"
enabled = false

[management]
bind = "127.0.0.1"
port = 18080
enabled = false

[cluster]
bind = "10.0.0.1"
port = 17946
join = ["10.0.0.2:7946", "[fd00::3]:7946", "node4.local:7946"]
enabled = true
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config.toml: ")
    return message


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == BrokerConfig()
    assert cfg.allow_anonymous is True
    assert cfg.password_file == "" and cfg.acl_file == ""
    assert cfg.max_inflight_messages == 32
    assert cfg.max_queued_messages == 1000
    assert cfg.max_packet_size == 1048576
    assert cfg.max_keepalive == 65535
    assert cfg.sys_interval == 10
    assert cfg.persistence is False
    assert cfg.session_expiry_interval == 7200
    assert cfg.retain_available is True
    assert cfg.max_connections == 0
    assert cfg.shared_subscription_strategy == "round_robin"
    assert cfg.max_outgoing_buffer == 8 * 1024 * 1024
    assert cfg.node_name == "minibroker@127.0.0.1"
    assert cfg.data_dir == "./data"
    assert cfg.cookie == "minibroker"
    assert cfg.tcp == ListenerConfig("127.0.0.1", 1883)
    assert cfg.ws == ListenerConfig("127.0.0.1", 8083, True, "/mqtt")
    assert cfg.management == ManagementConfig("127.0.0.1", 8080)
    assert cfg.management.max_row_limit == 10000
    assert cfg.management.metrics_auth is False
    assert cfg.management.default_app is True
    assert cfg.management.apps == []
    assert cfg.cluster == ListenerConfig("127.0.0.1", 7946)
    assert cfg.cluster_join == []


def test_empty_file_is_defaults() -> None:
    assert parse_config("") == BrokerConfig()
    assert parse_config("# only a comment\n[node]\n[listener.tcp]\n") == BrokerConfig()


def test_default_listeners_are_not_shared() -> None:
    a, b = BrokerConfig(), BrokerConfig()
    a.tcp.port = 1
    assert b.tcp.port == 1883
    a.cluster_join.append("x:1")
    assert b.cluster_join == []


# --------------------------------------------------------------------------- a full file


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "minibroker.toml"
    path.write_text(FULL, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.allow_anonymous is False
    assert cfg.password_file == "/etc/minibroker/passwd"
    assert cfg.acl_file == "/etc/minibroker/acl"
    assert cfg.max_inflight_messages == 10
    assert cfg.max_queued_messages == 500
    assert cfg.max_packet_size == 65536
    assert cfg.max_keepalive == 600
    assert cfg.sys_interval == 2.5
    assert cfg.persistence is True
    assert cfg.session_expiry_interval == 60
    assert cfg.retain_available is False
    assert cfg.max_connections == 100
    assert cfg.shared_subscription_strategy == "hash_clientid"
    assert cfg.max_outgoing_buffer == 1024
    assert cfg.node_name == "b1@10.0.0.1"
    assert cfg.data_dir == "/var/lib/minibroker"
    assert cfg.cookie == "s3cret"
    assert cfg.tcp == ListenerConfig("0.0.0.0", 11883, True)
    assert cfg.ws == ListenerConfig("::", 18083, False, "/ws")
    assert cfg.management == ManagementConfig("127.0.0.1", 18080, False)
    assert cfg.cluster == ListenerConfig("10.0.0.1", 17946, True)
    assert cfg.cluster_join == ["10.0.0.2:7946", "[fd00::3]:7946", "node4.local:7946"]


def test_partial_section_keeps_other_defaults() -> None:
    cfg = parse_config("[listener.ws]\nport = 9001\n")
    assert cfg.ws == ListenerConfig("127.0.0.1", 9001, True, "/mqtt")
    assert cfg.tcp == ListenerConfig("127.0.0.1", 1883)


def test_inline_tables_and_dotted_keys() -> None:
    cfg = parse_config('listener.tcp.port = 1884\nnode = { name = "n@h" }\n')
    assert cfg.tcp.port == 1884
    assert cfg.node_name == "n@h"


def test_port_zero_is_ephemeral() -> None:
    cfg = parse_config("[listener.tcp]\nport = 0\n[cluster]\nport = 0\n")
    assert cfg.tcp.port == 0 and cfg.cluster.port == 0


def test_max_inflight_zero_means_unlimited() -> None:
    assert parse_config("max_inflight_messages = 0").max_inflight_messages == 65535


def test_sys_interval_zero_disables_and_int_becomes_float() -> None:
    assert parse_config("sys_interval = 0").sys_interval == 0
    value = parse_config("sys_interval = 3").sys_interval
    assert value == 3.0 and isinstance(value, float)


@pytest.mark.parametrize("strategy", ["round_robin", "random", "hash_clientid", "hash_topic"])
def test_shared_subscription_strategies(strategy: str) -> None:
    cfg = parse_config(f'shared_subscription_strategy = "{strategy}"')
    assert cfg.shared_subscription_strategy == strategy


# --------------------------------------------------------------------------- errors


def test_unknown_top_level_key_suggests() -> None:
    assert _error("max_inflight = 3") == (
        "config.toml: unknown key 'max_inflight' in [top level] "
        "(did you mean 'max_inflight_messages'?)"
    )


def test_unknown_key_without_close_match() -> None:
    assert _error("zzz = 1") == "config.toml: unknown key 'zzz' in [top level]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nnmae = 'x'", "unknown key 'nmae' in [node] (did you mean 'name'?)"),
        ("[listener.tcp]\nprot = 1", "unknown key 'prot' in [listener.tcp] (did you mean 'port'?)"),
        (
            "[listener.ws]\npaht = '/x'",
            "unknown key 'paht' in [listener.ws] (did you mean 'path'?)",
        ),
        ("[cluster]\njoins = []", "unknown key 'joins' in [cluster] (did you mean 'join'?)"),
        ("[management]\npath = '/x'", "unknown key 'path' in [management]"),
        ("[listener.tcp]\njoin = []", "unknown key 'join' in [listener.tcp]"),
        # a table where a key belongs is still an unknown key, not a section
        (
            "[listener.tcp]\nprot = {}",
            "unknown key 'prot' in [listener.tcp] (did you mean 'port'?)",
        ),
        ("[alarms]\nx = { y = 1 }", "unknown key 'x' in [alarms]"),
        ("[plugins.web_hook]\nfoo = {}", "unknown key 'foo' in [plugins.web_hook]"),
    ],
)
def test_unknown_key_in_section(text: str, expected: str) -> None:
    assert _error(text) == f"config.toml: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[nodes]\nname = 'x'", "unknown section [nodes] (did you mean [node]?)"),
        ("[listener.tls]\nport = 8883", "unknown section [listener.tls]"),
        ("[mqtt]\nport = 1", "unknown section [mqtt]"),
        ("[clusters]\nport = 1", "unknown section [clusters] (did you mean [cluster]?)"),
        ("[listener]\nfoo = 1", "unknown section [listener.foo]"),
        ("[plugins]\nx = 1", "'x' in [plugins] must be a table [plugins.x]"),
    ],
)
def test_bad_section_name(text: str, expected: str) -> None:
    assert _error(text).startswith(f"config.toml: {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("allow_anonymous = 1", "'allow_anonymous' in [top level] must be true or false"),
        ("persistence = 'yes'", "'persistence' in [top level] must be true or false"),
        ("max_packet_size = '1M'", "'max_packet_size' in [top level] must be an integer"),
        ("max_keepalive = true", "'max_keepalive' in [top level] must be an integer"),
        ("max_connections = 1.5", "'max_connections' in [top level] must be an integer"),
        ("password_file = 3", "'password_file' in [top level] must be a string"),
        ("sys_interval = '10s'", "'sys_interval' in [top level] must be a number of seconds"),
        ("[listener.tcp]\nport = '1883'", "'port' in [listener.tcp] must be an integer"),
        ("[listener.ws]\nenabled = 'no'", "'enabled' in [listener.ws] must be true or false"),
        ("[node]\nname = 1", "'name' in [node] must be a string"),
        ("[cluster]\njoin = 'a:1'", "'join' in [cluster] must be an array"),
        ("[cluster]\njoin = [1]", "'join' in [cluster] entries must be"),
        ("node = 'x'", "'node' in [top level] must be a table [node]"),
        ("[listener]\ntcp = 1", "'tcp' in [listener] must be a table [listener.tcp]"),
    ],
)
def test_wrong_type(text: str, expected: str) -> None:
    assert _error(text).startswith(f"config.toml: {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_inflight_messages = -1", "between 0 and 65535, got -1"),
        ("max_inflight_messages = 70000", "between 0 and 65535, got 70000"),
        ("max_packet_size = 0", "between 1 and 268435460, got 0"),
        ("max_packet_size = 268435461", "between 1 and 268435460"),
        ("max_keepalive = 65536", "between 0 and 65535"),
        ("sys_interval = -1", ">= 0 seconds"),
        ("sys_interval = nan", ">= 0 seconds"),
        ("session_expiry_interval = -5", "between 0 and 4294967295"),
        ("max_connections = -1", ">= 0"),
        ("max_outgoing_buffer = 0", ">= 1"),
        ("shared_subscription_strategy = 'sticky'", "must be one of round_robin"),
        ("[listener.tcp]\nport = 65536", "between 0 and 65535, got 65536"),
        ("[cluster]\nport = -1", "between 0 and 65535"),
        ("[listener.ws]\npath = 'mqtt'", "starting with '/'"),
        ("[listener.tcp]\nbind = ''", "must be an address or host name"),
        ("[node]\nname = ''", "must not be empty"),
        ("[node]\nname = 'a b'", "without spaces"),
        ("[node]\ncookie = ''", "must not be empty"),
    ],
)
def test_out_of_range(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_max_queued_messages_zero_explains_bounded_memory() -> None:
    message = _error("max_queued_messages = 0")
    assert "'max_queued_messages' in [top level] must be >= 1" in message
    assert "memory" in message and "unlimited" in message


@pytest.mark.parametrize(
    "entry", ["nohost", "host:", ":7946", "host:port", "host:0", "host:70000", "::1:7946", "[x]:1"]
)
def test_bad_join_entry(entry: str) -> None:
    message = _error(f"[cluster]\njoin = ['10.0.0.2:7946', '{entry}']")
    assert message.startswith("config.toml: 'join' in [cluster]: ")
    assert repr(entry) in message


def test_ipv6_join_hint() -> None:
    assert "[::1]:7946" in _error("[cluster]\njoin = ['::1:7946']")


def test_invalid_toml() -> None:
    assert _error("allow_anonymous = ").startswith("config.toml: invalid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read configuration"):
        load_config(missing)


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("max_inflight = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: unknown key 'max_inflight'")


# --------------------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.2:7946", ("10.0.0.2", 7946)),
        ("node-2.example.com:1", ("node-2.example.com", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:7946", ("::1", 7946)),
        ("[fd00::3]:17946", ("fd00::3", 17946)),
    ],
)
def test_validate_host_port(text: str, expected: tuple[str, int]) -> None:
    assert validate_host_port(text) == expected


# --------------------------------------------------------------------------- overrides


def test_overrides_win_and_do_not_mutate() -> None:
    base = parse_config(FULL)
    out = apply_overrides(
        base,
        node_name="cli@127.0.0.1",
        host="127.0.0.2",
        mqtt_port=0,
        ws_port=1,
        http_port=2,
        cluster_port=3,
        join=["a:1", "[::1]:2"],
        data_dir="/tmp/d",
    )
    assert out.node_name == "cli@127.0.0.1"
    assert out.data_dir == "/tmp/d"
    assert [ln.bind for ln in (out.tcp, out.ws, out.management, out.cluster)] == ["127.0.0.2"] * 4
    assert (out.tcp.port, out.ws.port, out.management.port, out.cluster.port) == (0, 1, 2, 3)
    assert out.cluster_join == ["a:1", "[::1]:2"]
    # the rest comes from the file, and the file's config is untouched
    assert out.ws.path == "/ws" and out.ws.enabled is False
    assert out.max_inflight_messages == 10
    assert base == parse_config(FULL)


def test_no_overrides_is_equal_copy() -> None:
    base = BrokerConfig()
    out = apply_overrides(base)
    assert out == base and out is not base and out.tcp is not base.tcp


def test_empty_join_override_clears_file_list() -> None:
    assert apply_overrides(parse_config(FULL), join=[]).cluster_join == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mqtt_port": 65536}, "--mqtt-port must be between 0 and 65535"),
        ({"cluster_port": -1}, "--cluster-port must be between 0 and 65535"),
        ({"join": ["nohost"]}, "--join: 'nohost' is not a valid peer address"),
        ({"host": ""}, "--host must be an address"),
        ({"node_name": "a b"}, "--node-name must be"),
        ({"data_dir": ""}, "--data-dir must not be empty"),
    ],
)
def test_bad_override(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(BrokerConfig(), **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"command line: {expected}")


# --------------------------------------------------------------------------- [management] API keys

MANAGEMENT = """
[management]
port = 8081
max_row_limit = 500
metrics_auth = true
default_app = false

[[management.apps]]
id = "ops"
secret = "s3cret"
name = "Operations"
desc = "dashboards"

[[management.apps]]
id = "old"
secret = "x"
status = false
expired = 1700000000
"""


def test_management_api_keys() -> None:
    cfg = parse_config(MANAGEMENT)
    m = cfg.management
    assert (m.port, m.max_row_limit, m.metrics_auth, m.default_app) == (8081, 500, True, False)
    assert m.apps == [
        ManagementApp("ops", "s3cret", "Operations", "dashboards", True, None),
        ManagementApp("old", "x", "", "", False, 1700000000),
    ]
    copy = apply_overrides(cfg, http_port=0)
    assert copy.management.apps == m.apps and copy.management.apps is not m.apps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[management]\nmax_row_limit = 0", "'max_row_limit' in [management] must be >= 1"),
        ("[management]\nmetrics_auth = 1", "'metrics_auth' in [management] must be true or false"),
        ("[management]\napps = 3", "'apps' in [management] must be an array of tables"),
        ("[[management.apps]]\nid = 'a'", "[[management.apps]] needs 'secret'"),
        (
            "[[management.apps]]\nid = 'a'\nsecret = 'b'\nsecrte = 'c'",
            "unknown key 'secrte' in [[management.apps]] (did you mean 'secret'?)",
        ),
        (
            "[[management.apps]]\nid = 'a'\nsecret = 'b'\nexpired = -1",
            "'expired' in [[management.apps]] must be >= 0",
        ),
        (
            "[[management.apps]]\nid = 'a'\nsecret = 'b'\n[[management.apps]]\nid = 'a'\n"
            "secret = 'c'",
            "[[management.apps]] defines app 'a' twice",
        ),
    ],
)
def test_management_api_key_errors(text: str, expected: str) -> None:
    assert _error(text).startswith(f"config.toml: {expected}")
