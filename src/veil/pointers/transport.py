"""Transport: how a client's encoded frames reach one node and its reply frames come back.

A :class:`~veil.pointers.remote.Remote` owns one transport and knows nothing else of
the way frames travel. The implementations:

* ``veil.node.transports.InProcessTransport``: a :class:`~veil.node.worker.VirtualWorker`'s,
  hands each frame to a node's handler in the same process;
* ``veil.node.transports.WebSocketTransport``: a :class:`~veil.node.client.NodeClient`'s,
  a WebSocket op stream plus a bulk TCP lane for large frames;
* :class:`RecordingTransport` (here): for tests, records every frame and answers from
  another transport, or with replies and failures the test injects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any, TypeAlias

from veil.serde import codec
from veil.serde.messages import Call

#: A frame, or a part of one.
Buffer: TypeAlias = bytes | bytearray | memoryview


class Transport(ABC):
    """Carries one client's frames to a node and returns the node's reply frames.

    A transport is called under its owner's lock, one round trip at a time.

    Example:
        >>> class Echo(Transport):
        ...     def roundtrip(self, frame, expect_bytes=0):
        ...         return bytes(frame)
        >>> Echo().roundtrip_parts([b"he", b"llo"])
        b'hello'
    """

    #: True: :meth:`roundtrip_parts` sends a list of buffers as one frame without joining
    #: them (a large tensor goes out from its own memory), so callers should prefer it.
    scatter: bool = False

    @abstractmethod
    def roundtrip(self, frame: Buffer, expect_bytes: int = 0) -> Buffer:
        """Send one encoded frame and return the encoded reply frame.

        Args:
            frame: the request.
            expect_bytes: the size of the reply when the caller knows it is large (a
                ``get`` of a big tensor), so the transport can pick a lane for it.

        Raises:
            TransportError: the frame could not be delivered or no reply came.
        """

    def roundtrip_parts(self, parts: list[Buffer], expect_bytes: int = 0) -> Buffer:
        """:meth:`roundtrip` of the frame made of ``parts`` (joined here, unless the
        transport sends parts as they are: see :attr:`scatter`)."""
        return self.roundtrip(parts[0] if len(parts) == 1 else b"".join(parts), expect_bytes)

    def close(self) -> None:
        """Close what the transport holds open (it may reopen on its next round trip);
        nothing, for a transport that holds nothing."""
        return None


class RecordingTransport(Transport):
    """A transport for tests: records every request frame, and answers it from ``inner``
    or with what the test injected (a reply message, raw bytes, or an exception to raise).

    Args:
        inner: the transport that answers calls nothing was injected for (typically the
            worker's own); None: every call must have an injected answer.

    Example:
        >>> import torch, veil
        >>> from veil.errors import ConnectionLost
        >>> alice = veil.VirtualWorker("alice")
        >>> spy = alice.transport = RecordingTransport(alice.transport)
        >>> x = torch.ones(2).send(alice)
        >>> type(spy.calls[-1].msg).__name__
        'SendObject'
        >>> spy.inject(ConnectionLost("the link dropped"))
        >>> x.get()
        Traceback (most recent call last):
        ...
        veil.errors.ConnectionLost: the link dropped
        >>> x.get()  # the next call goes through again
        tensor([1., 1.])
    """

    def __init__(self, inner: Transport | None = None) -> None:
        self.inner = inner
        self.scatter = inner.scatter if inner is not None else False
        #: Every request frame, joined, in order.
        self.frames: list[bytes] = []
        self._script: deque[Any] = deque()

    def inject(self, answer: Any) -> None:
        """Answer the next call that has no injected answer yet with ``answer``: a reply
        message (encoded here), raw reply bytes, or an exception (raised, as a transport
        raises a failure; the frame counts as sent).

        Example:
            >>> from veil.serde.messages import Done
            >>> t = RecordingTransport()
            >>> t.inject(Done())
            >>> t.roundtrip(b"frame") == codec.encode(Done())
            True
        """
        self._script.append(answer)

    @property
    def calls(self) -> list[Call]:
        """The recorded frames, decoded (deferred ops are in each call's ``before``)."""
        return [codec.decode_call(f) for f in self.frames]

    def roundtrip(self, frame: Buffer, expect_bytes: int = 0) -> Buffer:
        return self._answer([frame], expect_bytes)

    def roundtrip_parts(self, parts: list[Buffer], expect_bytes: int = 0) -> Buffer:
        return self._answer(parts, expect_bytes)

    def _answer(self, parts: list[Buffer], expect_bytes: int) -> Buffer:
        self.frames.append(b"".join(bytes(p) for p in parts))
        if self._script:
            answer = self._script.popleft()
            if isinstance(answer, BaseException):
                raise answer
            return answer if isinstance(answer, Buffer) else codec.encode(answer)
        if self.inner is None:
            raise AssertionError("RecordingTransport got a call with no answer injected")
        if self.scatter:
            return self.inner.roundtrip_parts(parts, expect_bytes)
        return self.inner.roundtrip(parts[0] if len(parts) == 1 else b"".join(parts), expect_bytes)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def __repr__(self) -> str:
        return f"RecordingTransport({len(self.frames)} frames, inner={self.inner!r})"
