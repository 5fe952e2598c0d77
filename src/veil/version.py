"""Package and wire-format versions."""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the wire format. Peers that differ refuse each other with a clear error.
WIRE_VERSION = 1
