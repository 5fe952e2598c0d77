"""Type aliases shared across veil."""

from __future__ import annotations

from typing import Literal, TypeAlias

#: Identifier of an object in a node's store (random, unguessable 63-bit integer).
ObjectId: TypeAlias = int
#: Name of a node (``"alice"``).
NodeId: TypeAlias = str
#: Identifier of a user on a node.
UserId: TypeAlias = int
#: Roles a node's user can have.
Role: TypeAlias = Literal["owner", "admin", "data_scientist"]

ROLES: tuple[str, ...] = ("owner", "admin", "data_scientist")
ADMIN_ROLES: frozenset[str] = frozenset({"owner", "admin"})
