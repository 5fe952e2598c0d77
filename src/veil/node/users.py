"""Users, roles, password hashing (scrypt) and session tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from veil.errors import InvalidRequest
from veil.node.text import text_problem
from veil.types import ADMIN_ROLES, ROLES

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class Session:
    """Who is calling: set by the transport after authentication."""

    user_id: int
    email: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES


def hash_password(password: str) -> str:
    """Salted scrypt hash, as ``scrypt$n$r$p$salt$hash``.

    Example:
        >>> h = hash_password("correct horse")
        >>> verify_password("correct horse", h), verify_password("wrong", h)
        (True, False)
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)  # type: ignore[arg-type]
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    raw = password.encode("utf-8", "surrogatepass")  # a lone surrogate matches nothing, quietly
    got = hashlib.scrypt(raw, salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(got, bytes.fromhex(digest))


#: A well-formed hash with the current cost parameters that no password matches (its
#: digest is all zeros). :meth:`veil.node.Node.authenticate` checks an unknown email's
#: password against it, so that path runs exactly the one scrypt a known email runs.
STAND_IN_HASH = f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${'00' * 16}${'00' * 64}"


def check_new_user(email: str, password: str, role: str, name: str = "") -> None:
    """Validate a new user's fields; every problem is reported at once.

    Example:
        >>> check_new_user("ann@clinic.org", "long-enough-pw", "data_scientist", "Ann")
        >>> check_new_user("ann@clinic.org", "short", "data_scientist", "Ann\\x00")
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: name contains a NUL character (\\x00) at position 3, which databases refuse in text: remove it; password must have at least 8 characters
    """
    problems = [
        f"{field} contains {problem}: remove it"
        for field, value in (("email", email), ("password", password), ("name", name))
        if (problem := text_problem(value)) is not None
    ]
    if "@" not in email or len(email) > 254:
        problems.append(f"email {email[:60]!r} is not an email address")
    if len(password) < MIN_PASSWORD:
        problems.append(f"password must have at least {MIN_PASSWORD} characters")
    if role not in ROLES:
        problems.append(f"role must be one of {', '.join(ROLES)}, got {role[:40]!r}")
    if problems:
        raise InvalidRequest("; ".join(problems))


def new_token() -> str:
    """A fresh bearer token (256 bits)."""
    return secrets.token_urlsafe(32)


def token_key(token: str) -> str:
    """What the node stores for a token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
