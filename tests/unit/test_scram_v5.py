"""SCRAM-SHA-256 for MQTT 5.0 enhanced authentication, checked against RFC 7677's example."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.enhanced_auth import (
    CONTINUE,
    FAIL,
    SCRAM_SHA_256,
    SUCCESS,
    ScramClient,
    ScramSha256,
    find_method,
    parse_scram_credential,
    scram_credential,
)
from broker.core.hooks import Hooks
from broker.core.settings import Settings
from broker.protocol.constants import ReasonCode

# RFC 7677 section 3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_CREDENTIALS = {"user": scram_credential("pencil", salt=RFC_SALT, iterations=4096)}


def rfc_server() -> ScramSha256:
    return ScramSha256(RFC_CREDENTIALS, server_nonce=lambda: RFC_SERVER_NONCE)


def test_rfc_7677_example_exchange() -> None:
    server = rfc_server()
    first = server.start(RFC_CLIENT_FIRST)
    assert (first.status, first.data) == (CONTINUE, RFC_SERVER_FIRST)
    final = server.step(RFC_CLIENT_FINAL)
    assert (final.status, final.data, final.username) == (SUCCESS, RFC_SERVER_FINAL, "user")


def test_rfc_7677_example_client_side() -> None:
    client = ScramClient("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == RFC_CLIENT_FIRST
    assert client.final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert client.verify(RFC_SERVER_FINAL)


def test_credential_round_trip_and_format() -> None:
    text = RFC_CREDENTIALS["user"]
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    credential = parse_scram_credential(text)
    assert (credential.salt, credential.iterations) == (RFC_SALT, 4096)
    assert len(credential.stored_key) == len(credential.server_key) == 32


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096:c2FsdA==$short:short",
        "SCRAM-SHA-256$4096:not base64!$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$4096$missing",
    ],
)
def test_bad_credentials_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_scram_credential(text)


TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@settings(max_examples=20, deadline=None)
@given(
    username=st.text(TEXT, min_size=1, max_size=12),
    password=st.text(TEXT, max_size=12),
    right=st.booleans(),
)
def test_any_user_and_password(username: str, password: str, right: bool) -> None:
    server = ScramSha256({username: scram_credential(password, iterations=2)})
    client = ScramClient(username, password if right else password + "x")
    first = server.start(client.first())
    assert first.status == CONTINUE and first.data is not None
    final = server.step(client.final(first.data))
    if right:
        assert final.status == SUCCESS and final.username == username
        assert final.data is not None and client.verify(final.data)
    else:
        assert final.status == FAIL
        assert final.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD


def test_unknown_user_gets_a_stable_decoy_salt_then_fails() -> None:
    one = ScramSha256(RFC_CREDENTIALS).start(b"n,,n=nobody,r=abc")
    two = ScramSha256(RFC_CREDENTIALS).start(b"n,,n=nobody,r=abc")
    assert one.status == two.status == CONTINUE
    assert one.data is not None and two.data is not None
    salt_one = one.data.split(b",")[1]
    assert salt_one == two.data.split(b",")[1]  # the same salt each time: no tell
    server = ScramSha256(RFC_CREDENTIALS)
    client = ScramClient("nobody", "pw")
    first = server.start(client.first())
    assert first.data is not None
    assert server.step(client.final(first.data)).status == FAIL


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"\xff\xfe",
        b"p=tls-server-end-point,,n=user,r=abc",  # channel binding: not offered
        b"n,,r=abc,n=user",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,m=ext,n=user,r=abc",
        b"x,,n=user,r=abc",
        b"n,,n=us=er,r=abc",
    ],
)
def test_malformed_client_first_fails(client_first: bytes) -> None:
    assert ScramSha256(RFC_CREDENTIALS).start(client_first).status == FAIL


@pytest.mark.parametrize(
    "client_final",
    [
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",  # no proof
        b"c=biws,r=wrong-nonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",  # other GS2 header
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
    ],
)
def test_bad_client_final_fails(client_final: bytes) -> None:
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    assert server.step(client_final).status == FAIL


def test_out_of_order_steps_fail() -> None:
    server = rfc_server()
    assert server.step(RFC_CLIENT_FINAL).status == FAIL  # before start
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    assert server.start(RFC_CLIENT_FIRST).status == FAIL  # started twice
    assert server.step(RFC_CLIENT_FINAL).status == SUCCESS
    assert server.step(RFC_CLIENT_FINAL).status == FAIL  # replayed


def test_find_method_plugins_first_then_configured_scram() -> None:
    hooks = Hooks()
    assert find_method(hooks.auth_methods, Settings(), SCRAM_SHA_256) is None  # nothing configured
    configured = Settings(scram_credentials=RFC_CREDENTIALS)
    method = find_method(hooks.auth_methods, configured, SCRAM_SHA_256)
    assert method is not None and isinstance(method("c", None), ScramSha256)
    assert find_method(hooks.auth_methods, configured, "OTHER") is None
    sentinel = ScramSha256({})
    hooks.auth_methods[SCRAM_SHA_256] = lambda client_id, username: sentinel
    method = find_method(hooks.auth_methods, configured, SCRAM_SHA_256)
    assert method is not None and method("c", None) is sentinel
