"""Typed arguments of the MPC ops a node runs: a missing, unexpected or mistyped argument is
an :class:`~veil.errors.InvalidRequest` that names it, checked from the op's annotations
before the op runs (never an internal error, and never a message that quotes a value).

Example:
    >>> def op_scale(x: torch.Tensor, k: int, tag: str = "") -> torch.Tensor:
    ...     return x * k
    >>> scale = typed("mpc.scale", op_scale)
    >>> scale(torch.ones(2), 3)
    tensor([3., 3.])
    >>> scale(torch.ones(2))
    Traceback (most recent call last):
    ...
    veil.errors.InvalidRequest: mpc.scale: missing argument 'k' (mpc.scale takes x, k, tag)
    >>> scale(torch.ones(2), "3")
    Traceback (most recent call last):
    ...
    veil.errors.InvalidRequest: mpc.scale: argument 'k' must be an integer, got a string
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import torch

from veil.errors import InvalidRequest

Check = tuple[Callable[[Any], bool], str]

_NAMES = {
    str: (lambda v: isinstance(v, str), "a string"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    list: (lambda v: isinstance(v, list | tuple), "a list"),
    tuple: (lambda v: isinstance(v, list | tuple), "a list"),
    dict: (lambda v: isinstance(v, dict), "a dict"),
    torch.Tensor: (lambda v: isinstance(v, torch.Tensor), "a tensor"),
    type(None): (lambda v: v is None, "None"),
}


def _check_of(hint: Any) -> Check | None:
    """An (accepts, description) pair for a type hint; ``None`` for ``Any``."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_check_of(a) for a in typing.get_args(hint)]
        if any(p is None for p in parts):
            return None
        checks = [p for p in parts if p is not None]
        return (lambda v: any(ok(v) for ok, _ in checks), " or ".join(d for _, d in checks))
    base = origin if origin is not None else hint
    if base not in _NAMES:
        raise TypeError(f"typed(): no check for the annotation {hint!r}")
    return _NAMES[base]


def _structured(hint: Any) -> bool:
    """Whether ``hint`` is a list of msgspec Structs or of tuples (a protocol payload that
    :func:`typed` converts and validates field by field, see :mod:`veil.mpc.messages`)."""
    if typing.get_origin(hint) is not list:
        return False
    (item,) = typing.get_args(hint) or (Any,)
    return (isinstance(item, type) and issubclass(item, msgspec.Struct)) or (
        typing.get_origin(item) is tuple
    )


def _convert(name: str, pname: str, value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` (msgspec), or an InvalidRequest naming the field that does not
    fit by its place (``items.0.gid``), never quoting a value."""
    try:
        return msgspec.convert(value, hint)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `")
        where = pname + path.rstrip("`").removeprefix("$").replace("[", ".").replace("]", "")
        raise InvalidRequest(f"{name}: {where}: {reason[:1].lower()}{reason[1:]}") from None


def describe(value: Any) -> str:
    """What a value is, for an error message (its type, never its content)."""
    for t in (bool, int, float, str, list, tuple, dict, torch.Tensor):
        if isinstance(value, t):
            return "a tensor" if t is torch.Tensor else _NAMES[t][1]
    return "None" if value is None else f"a {type(value).__name__}"


def typed(name: str, fn: Callable[..., Any], *, context: bool = False) -> Callable[..., Any]:
    """``fn`` with its arguments checked against its signature and annotations first.

    Args:
        name: the op's name, used in messages.
        fn: the op; with ``context`` its first parameter is the node's ``OpContext`` (not
            checked, not counted as an argument).

    Tuples passed where a list is annotated arrive as lists. A list of msgspec Structs (or of
    tuples) is converted and validated field by field (:mod:`veil.mpc.messages`).
    """
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    params = list(sig.parameters.values())[1 if context else 0 :]
    checks = [(p.name, _check_of(hints.get(p.name, Any))) for p in params]
    lists = {p.name for p in params if typing.get_origin(hints.get(p.name)) is list
             or hints.get(p.name) is list}  # fmt: skip
    takes = ", ".join(p.name for p in params) or "no arguments"
    structs = {p.name: hints[p.name] for p in params if _structured(hints.get(p.name))}

    n_all = len(sig.parameters)
    plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in sig.parameters.values())

    @functools.wraps(fn)
    def op(*args: Any, **kwargs: Any) -> Any:
        if plain and not kwargs and len(args) == n_all:  # the common case: every argument
            values = dict(zip(sig.parameters, args, strict=True))  # given in order
        else:
            try:
                values = sig.bind(*args, **kwargs).arguments
            except TypeError:
                raise InvalidRequest(_binding_problem(name, params, takes, args[int(context):],
                                                      kwargs)) from None  # fmt: skip
        for pname, check in checks:
            if check is None or pname not in values:
                continue
            ok, what = check
            if not ok(values[pname]):
                raise InvalidRequest(
                    f"{name}: argument {pname!r} must be {what}, got {describe(values[pname])}"
                )
            if pname in structs:
                values[pname] = _convert(name, pname, values[pname], structs[pname])
            elif pname in lists and isinstance(values[pname], tuple):
                values[pname] = list(values[pname])
        return fn(**values)

    return op


def _binding_problem(name: str, params: list[inspect.Parameter], takes: str,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:  # fmt: skip
    names = [p.name for p in params]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        return f"{name}: unexpected argument {unknown[0]!r} ({name} takes {takes})"
    if len(args) > len(params):
        return f"{name}: {len(args)} arguments given, it takes at most {len(params)} ({takes})"
    twice = [k for k in kwargs if k in names[: len(args)]]
    if twice:
        return f"{name}: argument {twice[0]!r} given twice"
    given = set(names[: len(args)]) | set(kwargs)
    missing = [
        p.name for p in params if p.default is inspect.Parameter.empty and p.name not in given
    ]
    return f"{name}: missing argument {missing[0]!r} ({name} takes {takes})" if missing else (
        f"{name}: arguments that do not fit ({name} takes {takes})"
    )  # fmt: skip
