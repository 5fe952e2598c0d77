"""HEScheme: what an encryption scheme supplies so its tensors can be encrypted, shipped and
computed on by nodes; the registry of schemes (``paillier``, ``ckks``); :func:`encrypt` under
whichever scheme a key belongs to; and :func:`send`, how an encrypted tensor reaches a node."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # (the schemes import this module)
    from veil.he.ckks import CKKSContext, CKKSTensor
    from veil.he.paillier import EncryptedTensor, PublicKey


class HEScheme(ABC):
    """One homomorphic encryption scheme, as veil's wire format and nodes see it.

    Subclasses name their tensor and public-context types and convert them to and from
    bytes; :mod:`veil.he.wire` wraps those bytes in wire Structs. Register an instance
    with :func:`register_scheme`.
    """

    name: ClassVar[str]
    tensor_type: ClassVar[type]
    context_type: ClassVar[type]

    @abstractmethod
    def encrypt(self, x: Any, key: Any, **kwargs: Any) -> Any:
        """Encrypt a tensor under ``key`` (a public context of this scheme)."""

    @abstractmethod
    def context_of(self, value: Any) -> Any:
        """The public context an encrypted tensor is bound to."""

    @abstractmethod
    def context_to_bytes(self, ctx: Any) -> bytes:
        """The public context's bytes: never a secret key."""

    @abstractmethod
    def context_from_bytes(self, data: bytes) -> Any:
        """Load a public context from a peer (validating it; refusing secret keys)."""

    @abstractmethod
    def tensor_to_parts(self, value: Any) -> tuple[list[bytes], dict[str, Any], Any]:
        """(ciphertext bytes, scalar metadata, layout tensor or None)."""

    @abstractmethod
    def tensor_from_parts(self, parts: list[bytes], meta: dict[str, Any], layout: Any,
                          ctx: Any, shape: list[int]) -> Any:  # fmt: skip
        """Rebuild (and validate) an encrypted tensor bound to ``ctx``."""

    @abstractmethod
    def nbytes(self, value: Any) -> int:
        """Memory an encrypted tensor or context holds (an estimate is fine)."""


_SCHEMES: dict[str, HEScheme] = {}


def register_scheme(scheme: HEScheme) -> None:
    """Add a scheme (refuses a second one of the same name)."""
    if scheme.name in _SCHEMES:
        raise ValueError(f"HE scheme {scheme.name!r} is already registered")
    _SCHEMES[scheme.name] = scheme


def scheme_named(name: str) -> HEScheme:
    scheme = _SCHEMES.get(name)
    if scheme is None:
        raise ValueError(f"unknown encryption scheme {name[:40]!r} (known: {sorted(_SCHEMES)})")
    return scheme


def scheme_for(value: Any) -> HEScheme:
    """The scheme of an encrypted tensor or a public context (or key)."""
    for scheme in _SCHEMES.values():
        if isinstance(value, scheme.tensor_type | scheme.context_type):
            return scheme
    raise TypeError(
        f"{type(value).__name__} is not an encrypted tensor or public context of a registered "
        f"scheme ({sorted(_SCHEMES)})"
    )


def schemes() -> list[str]:
    return sorted(_SCHEMES)


def encrypt(x: Any, key: PublicKey | CKKSContext, **kwargs: Any) -> EncryptedTensor | CKKSTensor:
    """Encrypt ``x`` under a Paillier public key or a CKKS context (keyword arguments go
    to :func:`paillier.encrypt` / :func:`ckks.encrypt`)."""
    try:
        scheme = scheme_for(key)
    except TypeError:
        raise TypeError(
            f"encrypt() needs a paillier.PublicKey or a ckks.CKKSContext, got {type(key).__name__}"
        ) from None
    return scheme.encrypt(x, key, **kwargs)  # type: ignore[no-any-return]


#: How an encrypted tensor goes to a node. :mod:`veil.he.remote` (the node-facing half,
#: above the schemes) installs it when ``veil.he`` is imported, which importing any scheme
#: module does first; the schemes' ``__veil_send__`` calls it, so they never import upward.
_sender: Callable[..., Any] | None = None


def set_sender(sender: Callable[..., Any]) -> None:
    """Install how encrypted tensors are sent to a node (``veil.he.remote.register`` does)."""
    global _sender
    _sender = sender


def send(value: Any, worker: Any, *, description: str = "") -> Any:
    """Send an encrypted tensor to ``worker`` (a connection to a node): returns its pointer."""
    if _sender is None:  # pragma: no cover - veil.he's import installs it
        raise RuntimeError("import veil.he to send encrypted tensors to a node")
    return _sender(value, worker, description=description)
