"""How a setting is declared: one dataclass field that carries its TOML key, range and doc.

Why on the field: a setting then has exactly one declaration (name and type from the field,
default from the field, the rest from `Spec`), and everything else is read off it: the core's
`Settings`, the server's loader and validator, `minibroker config-reference` and the README
table, the masking of secrets. This module is stdlib only so that the core can declare its own
settings without knowing the server; the server's checks interpret `Spec.kind`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["Spec", "declare", "declared", "setting", "spec_of"]

T = TypeVar("T")

_KEY = "minibroker.setting"


@dataclass(frozen=True, slots=True)
class Spec:
    """What a field's type and default do not say about a setting."""

    #: One line for the operator (README table, `minibroker config-reference`).
    doc: str
    #: The TOML key; "" = the attribute's name.
    key: str = ""
    #: The TOML table for a field of the top-level model that lives in a section
    #: (`node_name` is `[node] name`); "" = the table of the model that holds the field.
    section: str = ""
    #: Inclusive bounds of a number (None = open).
    lo: float | None = None
    hi: float | None = None
    #: The allowed strings (or entries, for a list).
    choices: tuple[str, ...] = ()
    #: A named rule beyond type, range and choices (the server's checks define them), e.g.
    #: "seconds", "bind", "publish_limit".
    kind: str = ""
    #: A short remark on the meaning of special values, e.g. "0 = unlimited"; shown in errors.
    note: str = ""
    #: Passwords, secrets, cookies: never shown back (e.g. by the management API).
    secret: bool = False
    #: For a model shared by several tables (a listener): the tables this field belongs to;
    #: empty = all of them.
    only: frozenset[str] = frozenset()


@overload
def setting(default: T, *, doc: str, **spec: Any) -> T: ...
@overload
def setting(*, factory: Callable[[], T], doc: str, **spec: Any) -> T: ...
def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    doc: str,
    **spec: Any,
) -> Any:
    """A dataclass field that is a setting: ``x: int = setting(5, doc="...", lo=0)``."""
    metadata = declare(doc=doc, **spec)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declare(*, doc: str, **spec: Any) -> dict[str, Spec]:
    """Field metadata for a setting without a default:
    ``x: str = field(metadata=declare(doc="..."))`` (a field mypy knows is required)."""
    return {_KEY: Spec(doc=doc, **spec)}


def spec_of(field: dataclasses.Field[Any]) -> Spec | None:
    """The declaration of a dataclass field, or None when the field is not a setting."""
    spec = field.metadata.get(_KEY)
    return spec if isinstance(spec, Spec) else None


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Spec]]:
    """The fields of a dataclass that are settings, with their declarations, in order."""
    for field in dataclasses.fields(cls):
        spec = spec_of(field)
        if spec is not None:
            yield field, spec
