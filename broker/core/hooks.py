"""Hook points that auth backends and plugins attach to.

Each hook point is an ordered list of callables. Authentication and authorization run as a chain:
the first callable that returns a decision wins; `None` means "no opinion, ask the next one".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.core.enhanced_auth import AuthMethod
    from broker.core.message import Message


@dataclass(slots=True)
class ClientInfo:
    """What hooks learn about a client: identity and where it comes from."""

    client_id: str
    username: str | None
    peer_host: str
    peer_port: int
    protocol_level: int
    listener: str = "tcp"


#: (client, password) -> True (accept), False (refuse), None (no opinion)
AuthenticateHook = Callable[[ClientInfo, "bytes | None"], "bool | None"]
#: (client, action "publish"|"subscribe", topic) -> True/False/None
AuthorizeHook = Callable[[ClientInfo, str, str], "bool | None"]
#: (message) -> the message to route, or None to drop it
PublishHook = Callable[["Message"], "Message | None"]
ClientConnectedHook = Callable[[ClientInfo], None]
ClientDisconnectedHook = Callable[[ClientInfo, str], None]
SessionSubscribedHook = Callable[[ClientInfo, str, int], None]


@dataclass(slots=True)
class Hooks:
    authenticate: list[AuthenticateHook] = field(default_factory=list)
    authorize: list[AuthorizeHook] = field(default_factory=list)
    message_publish: list[PublishHook] = field(default_factory=list)
    client_connected: list[ClientConnectedHook] = field(default_factory=list)
    client_disconnected: list[ClientDisconnectedHook] = field(default_factory=list)
    session_subscribed: list[SessionSubscribedHook] = field(default_factory=list)
    #: MQTT 5.0 enhanced authentication methods by name (see `broker.core.enhanced_auth`).
    auth_methods: dict[str, AuthMethod] = field(default_factory=dict)
    #: Authorize hooks (the same objects as in `authorize`) whose answer depends only on the
    #: client's id and username, the action and the topic, until `authorize_epoch` changes:
    #: answers the QoS 0 fast path may remember (`broker.core.frames_delivery`).
    pure_authorize: list[AuthorizeHook] = field(default_factory=list)
    #: Bumped by the owner of a pure authorize hook whenever its rules change (a reload).
    authorize_epoch: int = 0

    def authorize_is_pure(self) -> bool:
        """Every authorize hook is pure (`pure_authorize`): its answers may be remembered."""
        pure = self.pure_authorize
        return all(any(hook is known for known in pure) for hook in self.authorize)

    def run_authenticate(self, client: ClientInfo, password: bytes | None) -> bool | None:
        for hook in self.authenticate:
            decision = hook(client, password)
            if decision is not None:
                return decision
        return None

    def run_authorize(self, client: ClientInfo, action: str, topic: str) -> bool:
        for hook in self.authorize:
            decision = hook(client, action, topic)
            if decision is not None:
                return decision
        return True

    def run_message_publish(self, message: Message) -> Message | None:
        for hook in self.message_publish:
            result = hook(message)
            if result is None:
                return None
            message = result
        return message
