"""The one thing every pointer class shares: dropping the last handle releases the remote object."""

from __future__ import annotations

from typing import Any


class ReleasedOnDrop:
    """Mixin for handles with ``location``, ``id`` and ``_owned``: when the handle is garbage
    collected, its remote object is queued for deletion (sent with the next call).

    Example:
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> x = torch.ones(2).send(alice)
        >>> oid = x.id
        >>> del x
        >>> oid in alice._released
        True
    """

    __slots__ = ()

    location: Any
    id: Any
    _owned: bool

    def __del__(self) -> None:
        try:
            if self._owned and self.id is not None:
                self.location._released.append(self.id)  # Remote._release, inline
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to release to
            pass
