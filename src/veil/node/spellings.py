"""PySyft 0.2's names for a worker's objects and search (``_objects``, ``search``...).

A :class:`~veil.node.worker.Worker` inherits these. They are views of what the node lets
the caller see (``ListObjects``: your own objects, or all of them for the node's owner),
built by the client on each access; nothing here widens what a user may read.

Example:
    >>> import torch, veil as sy
    >>> bob = sy.VirtualWorker("bob")
    >>> x = torch.tensor([1.0, 2.0]).tag("#x").describe("two numbers").send(bob)
    >>> [p.id for p in bob.search(["#x"])] == [x.id], list(bob._tensors) == [x.id]
    (True, True)
"""

from __future__ import annotations

from typing import Any

from veil.pointers import PointerTensor
from veil.pointers.hook import text_to_tags
from veil.serde.messages import ObjectInfo


class PySyftSpellings:
    """Mixin: ``_objects``, ``_tensors``, ``search``, ``request_search``, ``clear_objects``."""

    def objects(self) -> list[ObjectInfo]:  # pragma: no cover - Worker defines it
        raise NotImplementedError

    def pointer(self, obj_id: int) -> Any:  # pragma: no cover - Worker defines it
        raise NotImplementedError

    def clear(self) -> None:  # pragma: no cover - Worker defines it
        raise NotImplementedError

    def _view(self, kinds: tuple[str, ...] | None) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for info in self.objects():
            if kinds is not None and info.kind not in kinds:
                continue
            if info.kind == "tensor":
                out[info.id] = PointerTensor(self, info, owned=False)  # type: ignore[arg-type]
            else:
                out[info.id] = self.pointer(info.id)
        return out

    @property
    def _objects(self) -> dict[int, Any]:
        """``{id: pointer}`` for the objects on the node that you may see (pointers that do
        not own them: dropping this view deletes nothing)."""
        return self._view(None)

    @property
    def _tensors(self) -> dict[int, PointerTensor]:
        """Like :attr:`_objects`, tensors only."""
        return self._view(("tensor",))

    def search(self, query: str | list[str] | tuple[str, ...], *more: str) -> list[PointerTensor]:
        """Pointers to your visible tensors that carry every tag in ``query`` (PySyft 0.2:
        ``bob.search(["#boston", "#data"])``; a plain word matches the description too).

        Example:
            >>> import torch, veil
            >>> bob = veil.VirtualWorker("bob")
            >>> _ = torch.ones(1).tag("#a", "#b").send(bob)
            >>> len(bob.search("#a")), len(bob.search(["#a", "#c"]))
            (1, 0)
        """
        terms = [query] if isinstance(query, str) else list(query)
        terms += list(more)
        found = []
        for info in self.objects():
            if info.kind != "tensor":
                continue
            tags, text = text_to_tags(info.description)
            if all(t in tags or (not t.startswith("#") and t in text) for t in terms):
                found.append(PointerTensor(self, info, owned=False))  # type: ignore[arg-type]
        return found

    def request_search(self, query: str | list[str], *more: str) -> list[PointerTensor]:
        """PySyft's name for :meth:`search` run on a remote worker: the same call here."""
        return self.search(query, *more)

    def clear_objects(self) -> None:
        """PySyft's name for :meth:`clear` (delete your objects on the node)."""
        self.clear()
