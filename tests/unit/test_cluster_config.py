"""`[cluster] advertise` and how broker.app turns the config into a ClusterNode's addresses."""

from __future__ import annotations

import pytest

from broker.app import parse_advertise
from broker.server.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("", None),
        ("10.0.0.5", ("10.0.0.5", 0)),  # port 0: the bound cluster port
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("node.example:7946", ("node.example", 7946)),
        ("fd00::5", ("fd00::5", 0)),
        ("[fd00::5]:7946", ("fd00::5", 7946)),
    ],
)
def test_advertise_forms(text: str, address: tuple[str, int] | None) -> None:
    cfg = parse_config(f'[cluster]\nadvertise = "{text}"\n')
    assert cfg.cluster_advertise == text
    assert parse_advertise(cfg.cluster_advertise) == address


@pytest.mark.parametrize("bad", ["a b", "host:0", "host:x", "[fd00::5]"])
def test_bad_advertise_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="advertise"):
        parse_config(f'[cluster]\nadvertise = "{bad}"\n')
