"""Text a node stores: refused at the door when a database could not keep it.

PostgreSQL refuses a NUL character (``\\x00``) in any text column, and no database takes
a lone surrogate (``\\ud800``: not valid Unicode, it cannot be encoded as UTF-8); JSON
columns refuse NaN and infinities. Such text used to reach the store and fail the write
there, after the node had changed its memory. Every user-supplied string a node may
persist is checked here instead, where it enters, and refused with an
:class:`~veil.errors.InvalidRequest` that names the field, before anything changes.

msgpack frames cannot carry a lone surrogate (the decoder checks UTF-8), but a NUL they
can, and messages built from JSON bodies (the REST API) or by Python callers skip that
decoder altogether: so the check is the node's, on every message, by type
(:data:`STORED_TEXT`); ops (``RunOp``) carry no stored text and are not walked.
"""

from __future__ import annotations

import math
import re
from typing import Any

from veil.errors import InvalidRequest
from veil.serde.messages import (
    CreateDataset,
    CreateUser,
    DecideRequest,
    RequestAccess,
    SendObject,
    SetBudget,
)

__all__ = ["STORED_TEXT", "check_message", "check_row", "check_text", "storable", "text_problem"]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

#: The text fields of each request that a node may write to its store, as attribute paths
#: (``[]``: every item of a list). Add a field here when a handler starts storing it.
STORED_TEXT: dict[type, tuple[str, ...]] = {
    SendObject: ("description",),
    RequestAccess: ("reason", "subject"),
    DecideRequest: ("note",),
    CreateDataset: (
        "name",
        "description",
        "assets[].name",
        "assets[].description",
        "assets[].columns[]",
    ),
    CreateUser: ("email", "password", "role", "name"),
    SetBudget: ("user", "dataset"),
}


def text_problem(value: str) -> str | None:
    """What in ``value`` a database could not store, or None.

    Example:
        >>> text_problem("fine"), text_problem("a\\x00")
        (None, 'a NUL character (\\\\x00) at position 1, which databases refuse in text')
    """
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    at, char = found.start(), found.group()
    if char == "\x00":
        return f"a NUL character (\\x00) at position {at}, which databases refuse in text"
    return (
        f"an unpaired surrogate (\\u{ord(char):04x}) at position {at}, which is not valid "
        "Unicode text"
    )


def check_text(field: str, value: str) -> None:
    """Refuse ``value`` if a database could not store it, naming ``field``.

    Raises:
        InvalidRequest: it holds a NUL character or a lone surrogate.

    Example:
        >>> check_text("reason", "a fine reason")
        >>> check_text("reason", "why\\x00")
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: reason contains a NUL character (\\x00) at position 3, which databases refuse in text; remove it and send again
    """
    problem = text_problem(value) if isinstance(value, str) else None
    if problem is not None:
        raise InvalidRequest(f"{field} contains {problem}; remove it and send again")


def check_message(msg: Any) -> None:
    """Check every stored text field of a request (:data:`STORED_TEXT`); the first bad one
    is named with its path.

    Raises:
        InvalidRequest: a field holds text a database refuses.

    Example:
        >>> from veil.serde.messages import RequestAccess
        >>> check_message(RequestAccess(7, "to check the totals"))
        >>> check_message(RequestAccess(7, "to check\\x00"))
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: RequestAccess.reason contains a NUL character (\\x00) at position 8, which databases refuse in text; remove it and send again
    """
    paths = STORED_TEXT.get(type(msg))
    if paths:
        for path in paths:
            _walk(msg, path.split("."), type(msg).__name__)


def _walk(obj: Any, parts: list[str], where: str) -> None:
    head, rest = parts[0], parts[1:]
    name, many = head.removesuffix("[]"), head.endswith("[]")
    value = getattr(obj, name, None)
    items = list(enumerate(value)) if many and isinstance(value, list | tuple) else []
    targets = (
        [(f"{where}.{name}[{i}]", v) for i, v in items] if many else [(f"{where}.{name}", value)]
    )
    for field, v in targets:
        if rest:
            _walk(v, rest, field)
        elif isinstance(v, str):
            check_text(field, v)


def check_row(key: str, kind: str, value: Any) -> None:
    """Check a capability's durable row (:meth:`veil.node.Node.put_row`) before it changes
    anything: text a database keeps (key, kind, every string in the value) and JSON a
    database accepts (dicts with string keys, lists, strings, finite numbers, booleans,
    None).

    Raises:
        InvalidRequest: naming the part of the row that cannot be stored.

    Example:
        >>> check_row("mpc.dealer:carol", "mpc.dealer", {"key": "ab12", "n": [1, 2.5]})
        >>> check_row("k", "kind", {"bound": float("inf")})
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: row 'k': value['bound'] is inf; JSON stores only finite numbers
    """
    check_text("row key", key)
    check_text(f"row {key!r}: kind", kind)
    _check_json(value, f"row {key!r}: value", 0)


def _check_json(value: Any, field: str, depth: int) -> None:
    if depth > 64:
        raise InvalidRequest(f"{field} is nested deeper than 64 levels")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{field} is {value}; JSON stores only finite numbers")
        return
    if isinstance(value, str):
        check_text(field, value)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{field}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidRequest(f"{field} has a key {k!r} that is not a string")
            check_text(f"{field} key {k[:40]!r}", k)
            _check_json(v, f"{field}[{k!r}]", depth + 1)
        return
    raise InvalidRequest(
        f"{field} is a {type(value).__name__}; a row holds JSON values only (dicts, lists, "
        "strings, numbers, booleans, None)"
    )


def storable(text: str) -> str:
    """``text`` with what a database refuses written as escapes (for text the node writes
    itself, such as an error message quoting an argument).

    Example:
        >>> storable("bad\\x00name \\ud800")
        'bad\\\\x00name \\\\ud800'
    """
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() == "\x00"
                           else f"\\u{ord(m.group()):04x}", text)  # fmt: skip
