"""veil.fl.secagg: secure aggregation without a dealer (SecAgg, SecAgg+), in process.

The server learns the sum of the clients' float vectors and nothing else, even when
clients drop out, as long as every needed secret keeps ``threshold`` shares (else the
round fails loudly). Bonawitz et al., CCS 2017, with the sparse neighbour graph of Bell
et al., CCS 2020. The pieces: :class:`SecAggConfig` (public parameters),
:class:`SecAggClient`, :class:`SecAggServer`, the messages in
:mod:`veil.fl.secagg.messages` and the fixed-point ring :class:`FixedPoint`.

Threat model: semi-honest server and clients, the server not colluding with ``threshold``
or more of a client's neighbours; the server routes keys honestly (no PKI here).
"""

from __future__ import annotations

from veil.fl.secagg.client import SecAggClient
from veil.fl.secagg.config import SecAggConfig
from veil.fl.secagg.encoding import FixedPoint, expand_seed
from veil.fl.secagg.graph import neighbour_graph, suggested_degree
from veil.fl.secagg.server import SecAggResult, SecAggServer

__all__ = [
    "FixedPoint",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "expand_seed",
    "neighbour_graph",
    "suggested_degree",
]
