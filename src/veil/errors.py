"""Every error veil raises, under one root.

::

    VeilError
    ├── PermissionDenied        (also PermissionError)   reading or using what you may not
    │   ├── DestinationNotApproved                        a move to a node the owner did not approve
    │   └── AuthenticationError                           bad or missing credentials / token
    │       ├── SessionExpired                            a token expired or was revoked
    │       └── RateLimited                               too many failed logins: wait
    ├── BudgetExceeded          (also PermissionError)   a DP release would pass a budget
    ├── UnboundedSensitivity    (also ValueError)        a DP release of something unbounded
    ├── OpNotAllowed            (also PermissionError)   an op outside the ``veil.ops`` allowlist
    ├── ObjectNotFound          (also KeyError)          an id the node does not hold (for you)
    ├── WorkerMismatch          (also ValueError)        pointers on different nodes in one op
    ├── InvalidRequest          (also ValueError)        a well-formed message the node refuses
    ├── SerdeError              (also ValueError)        a message that cannot be decoded
    │   ├── MessageTooLarge                               over the configured size limit
    │   └── VersionMismatch                               peers speak different wire versions
    ├── IntegrityError          (also ValueError)        bytes that do not match their SHA-256
    ├── StorageError                                      the node's store refused a write
    ├── TransportError          (also ConnectionError)   the link to a node failed
    │   ├── ConnectError                                  could not reach the node
    │   ├── ConnectionLost                                the link dropped mid-call
    │   └── Timeout             (also TimeoutError)       no answer in time
    ├── RemoteError                                       the op itself raised on the node
    ├── ProtocolError                                     a cryptographic protocol failed
    │   └── MACCheckFailed                                SPDZ MAC check caught tampering
    └── UnsupportedError        (also NotImplementedError)

Errors that cross the wire carry a stable ``code``; the client raises the same class
the node raised (see :func:`error_from_code`).
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "ConnectError",
    "ConnectionLost",
    "DestinationNotApproved",
    "IntegrityError",
    "InvalidRequest",
    "MACCheckFailed",
    "MessageTooLarge",
    "ObjectNotFound",
    "OpNotAllowed",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "RemoteError",
    "SerdeError",
    "SessionExpired",
    "StorageError",
    "Timeout",
    "TransportError",
    "UnboundedSensitivity",
    "UnsupportedError",
    "VeilError",
    "VersionMismatch",
    "WorkerMismatch",
    "error_from_code",
]


class VeilError(Exception):
    """Root of every veil error. ``code`` is stable across versions and the wire."""

    code = "veil_error"

    def __str__(self) -> str:  # KeyError quotes its message; keep ours readable
        return str(self.args[0]) if self.args else self.__class__.__name__


class PermissionDenied(VeilError, PermissionError):
    """The caller may not read or use this object."""

    code = "permission_denied"


class DestinationNotApproved(PermissionDenied):
    """A node was asked to move an object to a node its owner did not approve."""

    code = "destination_not_approved"


class AuthenticationError(PermissionDenied):
    """Missing, wrong or expired credentials."""

    code = "authentication_failed"


class SessionExpired(AuthenticationError):
    """A session token expired or was revoked: log in again (``veil.connect`` does so itself)."""

    code = "session_expired"


class RateLimited(AuthenticationError):
    """Too many failed logins: the node refuses logins for ``retry_after`` seconds.

    Example:
        >>> err = RateLimited("too many failed logins", retry_after=60.0)
        >>> err.retry_after, isinstance(err, AuthenticationError)
        (60.0, True)
    """

    code = "rate_limited"

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds until the node accepts a login again (None when the node did not say).
        self.retry_after = retry_after


class BudgetExceeded(VeilError, PermissionError):
    """A differentially private release would exceed the caller's privacy budget."""

    code = "budget_exceeded"


class UnboundedSensitivity(VeilError, ValueError):
    """A DP release was asked for a value whose sensitivity the node cannot bound."""

    code = "unbounded_sensitivity"


class OpNotAllowed(VeilError, PermissionError):
    """The operation is not on the node's allowlist (``veil.ops``)."""

    code = "op_not_allowed"


class ObjectNotFound(VeilError, KeyError):
    """The node holds no object with this id that the caller may see."""

    code = "object_not_found"


class WorkerMismatch(VeilError, ValueError):
    """Pointers to different nodes were mixed in one operation."""

    code = "worker_mismatch"


class InvalidRequest(VeilError, ValueError):
    """A well-formed message asked for something the node refuses (bad arguments)."""

    code = "invalid_request"


class SerdeError(VeilError, ValueError):
    """A message could not be encoded or decoded."""

    code = "serde_error"


class MessageTooLarge(SerdeError):
    """A message or frame is larger than the configured limit."""

    code = "message_too_large"


class VersionMismatch(SerdeError):
    """The two peers speak different wire-format versions."""

    code = "version_mismatch"


class IntegrityError(VeilError, ValueError):
    """Bytes (a hosted model, a cached file) do not match the SHA-256 they should have:
    tampered with or corrupted on the way. Nothing was loaded."""

    code = "integrity_error"


class StorageError(VeilError):
    """The node could not persist a change; it rolled back to its last durable state."""

    code = "storage_error"


class TransportError(VeilError, ConnectionError):
    """The connection to a node failed."""

    code = "transport_error"


class ConnectError(TransportError):
    """The node could not be reached."""

    code = "connect_error"


class ConnectionLost(TransportError):
    """The connection dropped while a call was in flight."""

    code = "connection_lost"


class Timeout(TransportError, TimeoutError):
    """The node did not answer in time."""

    code = "timeout"


class RemoteError(VeilError):
    """The operation raised on the node (e.g. a shape mismatch); the message says why."""

    code = "remote_error"


class ProtocolError(VeilError):
    """A cryptographic protocol did not complete correctly."""

    code = "protocol_error"


class MACCheckFailed(ProtocolError):
    """A SPDZ MAC check failed: some party tampered with its share."""

    code = "mac_check_failed"


class UnsupportedError(VeilError, NotImplementedError):
    """veil does not support this (yet); the message says what to do instead."""

    code = "unsupported"


def _all_subclasses(cls: type[VeilError]) -> list[type[VeilError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_code(code: str, message: str) -> VeilError:
    """Rebuild the error a peer raised from its stable code.

    Example:
        >>> err = error_from_code("permission_denied", "no")
        >>> isinstance(err, PermissionDenied), str(err)
        (True, 'no')
        >>> type(error_from_code("no-such-code", "x")).__name__
        'RemoteError'
    """
    for cls in _all_subclasses(VeilError):
        if cls.code == code:
            return cls(message)
    return RemoteError(message)
