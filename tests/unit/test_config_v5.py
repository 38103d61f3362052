"""Configuration keys of the MQTT 5.0 features, and how they reach the core's Settings."""

from __future__ import annotations

import pytest

from broker.core.enhanced_auth import scram_credential
from broker.server.config import BrokerConfig, ConfigError, apply_overrides, parse_config
from broker.server.node import settings_from_config

ALICE = scram_credential("pw", salt=b"salt", iterations=4096)

FULL_V5 = f"""
max_awaiting_rel = 20
max_topic_alias = 10
outgoing_topic_alias_maximum = 5
max_qos_allowed = 1
wildcard_subscription_available = false
shared_subscription_available = false
subscription_identifier_available = false
server_keepalive = 30
response_information = "replies/"

[scram_credentials]
alice = "{ALICE}"
"bob the builder" = "{ALICE}"
"""


def test_defaults_support_everything() -> None:
    settings = settings_from_config(BrokerConfig())
    assert settings.max_qos_allowed == 2
    assert settings.wildcard_subscription_available
    assert settings.shared_subscription_available
    assert settings.subscription_identifier_available
    assert settings.retain_available
    assert settings.server_keepalive == 0 and settings.response_information == ""
    assert settings.max_topic_alias == 65535 and settings.max_awaiting_rel == 100
    assert settings.scram_credentials == {}


def test_every_v5_key_reaches_the_settings() -> None:
    settings = settings_from_config(parse_config(FULL_V5))
    assert settings.max_awaiting_rel == 20
    assert settings.max_topic_alias == 10
    assert settings.outgoing_topic_alias_maximum == 5
    assert settings.max_qos_allowed == 1
    assert not settings.wildcard_subscription_available
    assert not settings.shared_subscription_available
    assert not settings.subscription_identifier_available
    assert settings.server_keepalive == 30
    assert settings.response_information == "replies/"
    assert settings.scram_credentials == {"alice": ALICE, "bob the builder": ALICE}


def test_overrides_copy_the_credentials() -> None:
    cfg = parse_config(FULL_V5)
    copy = apply_overrides(cfg)
    assert copy == cfg and copy.scram_credentials is not cfg.scram_credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_qos_allowed = 3", "'max_qos_allowed' in [top level] must be between 0 and 2"),
        ("max_awaiting_rel = 0", "between 1 and 65535, got 0 (the Receive Maximum)"),
        ("max_topic_alias = 65536", "between 0 and 65535"),
        ("server_keepalive = -1", "between 0 and 65535"),
        ("wildcard_subscription_available = 1", "must be true or false"),
        ("response_information = 5", "must be a string"),
        ("scram_credentials = 5", "must be a table of user name = stored credential"),
        ('[scram_credentials]\nalice = "plain"', "the entry of 'alice' is not a SCRAM-SHA-256"),
        ("[scram_credentials]\nalice = 1", "the entry of 'alice' must be a string"),
        ("max_topic_aliases = 1", "did you mean 'max_topic_alias'?"),
    ],
)
def test_v5_key_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "b.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("b.toml: ")
