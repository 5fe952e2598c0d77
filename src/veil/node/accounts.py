"""A node's users and sessions: accounts, passwords, login, tokens and revocation."""

from __future__ import annotations

import logging
import time

from veil.errors import (
    AuthenticationError,
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
    SessionExpired,
)
from veil.node.base import NodeBase
from veil.node.store import (
    UserRow,
)
from veil.node.users import STAND_IN_HASH, Session, check_new_user, hash_password, verify_password
from veil.serde.messages import (
    CreateUser,
    ListUsers,
    Reply,
    UserInfo,
    UserList,
)

log = logging.getLogger("veil.node")


class AccountsMixin(NodeBase):
    """Users, logins, bearer tokens and their revocation."""

    def create_user(self, email: str, password: str, *, role: str = "data_scientist",
                    name: str = "") -> UserInfo:  # fmt: skip
        """Add a user (the Python API for owners; remote callers use ``CreateUser``)."""
        with self._lock:
            info = self._add_user(email, password, role=role, name=name)
            self._commit()
            return info

    def _add_user(self, email: str, password: str, *, role: str, name: str) -> UserInfo:
        check_new_user(email, password, role, name)
        if any(u.email == email for u in self._users.values()):
            raise InvalidRequest(f"a user with email {email!r} already exists")
        uid = max(self._users, default=0) + 1
        user = UserRow(uid, email, role, name, hash_password(password), time.time())
        self._users[uid] = user
        self._batch.users.append(user)
        return UserInfo(uid, email, role, name)

    def authenticate(self, email: str, password: str) -> Session:
        """Check a password and return the user's :class:`Session`.

        Raises:
            AuthenticationError: unknown email or wrong password (same message for both).
        """
        user = next((u for u in list(self._users.values()) if u.email == email), None)
        # One scrypt either way: an unknown email must cost what a known one costs.
        stored = user.password_hash if user else STAND_IN_HASH
        if not verify_password(password, stored) or user is None:
            raise AuthenticationError(f"wrong email or password for node {self.name!r}")
        return Session(user.id, user.email, user.role)

    def login(self, email: str, password: str) -> Session:
        """Same as :meth:`authenticate`, and writes a ``login`` audit entry."""
        session = self.authenticate(email, password)
        with self._lock:
            self._audit_row(session, "login")
            self._commit()
        return session

    def issue_token(self, session: Session) -> str:
        """A bearer token for network clients (valid for 12 hours, or until revoked)."""
        return self._tokens.issue(session.user_id)

    def session_for_token(self, token: str) -> Session:
        """The session a bearer token stands for, checked on every message a connection
        carries; :class:`SessionExpired` if the token is unknown, expired or revoked."""
        uid = self._tokens.user_of(token)
        user = self._users.get(uid) if uid is not None else None
        if user is None:
            raise SessionExpired(
                f"node {self.name!r} has no live session for this token (it expired, was "
                "revoked, or never existed); log in again (veil.connect does so by itself)"
            )
        return Session(user.id, user.email, user.role)

    def revoke_sessions(self, by: Session, email: str) -> int:
        """End every session (token) of user ``email``: their open connections fail their
        next message. Users may end their own; owners and admins anyone's, but only an
        owner an owner's. Returns how many live sessions ended.

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_email="o@n.org", owner_password="password-1")
            >>> owner = node.login("o@n.org", "password-1")
            >>> token = node.issue_token(owner)
            >>> node.revoke_sessions(owner, "o@n.org")
            1
        """
        if email != by.email and not by.is_admin:  # before the lookup: no user enumeration
            raise PermissionDenied("only the node's owner or admins end other users' sessions")
        with self._lock:
            user = next((u for u in self._users.values() if u.email == email), None)
            if user is None:
                raise ObjectNotFound(f"node {self.name!r} has no user {email!r}")
            if user.role == "owner" and by.role != "owner":
                raise PermissionDenied("only an owner can end an owner's sessions")
            revoked = self._tokens.revoke_user(user.id)
            self._audit_row(by, "revoke_sessions", email)
            self._commit()
        return revoked

    def _create_user(self, session: Session, msg: CreateUser) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins create users")
        if msg.role == "owner" and session.role != "owner":
            raise PermissionDenied("only the owner can create another owner")
        info = self._add_user(msg.email, msg.password, role=msg.role, name=msg.name)
        self._audit_row(session, "create_user", f"{msg.email} ({msg.role})")
        return info

    def _list_users(self, session: Session, msg: ListUsers) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins list users")
        return UserList([UserInfo(u.id, u.email, u.role, u.name) for u in self._users.values()])

    def _email(self, user_id: int) -> str:
        user = self._users.get(user_id)
        return user.email if user else f"user#{user_id}"
