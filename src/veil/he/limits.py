"""What one HE call on a node may cost and accept: key sizes, result sizes, work budgets.

A node computes on ciphertexts a peer chose, so every ``he.*`` op is priced *before* it
runs, from public facts only (shapes, key size, slot layout, levels), and refused with a
clear :class:`~veil.errors.InvalidRequest` when it would pass a limit. The limits are
process-wide (a node process serves one deployment) and can be changed with
:func:`configure` or, for a block of code, :func:`override`.

Work is counted in two units:

* **Paillier**: modular multiplications modulo ``n**2`` at a 2048-bit key (an
  exponentiation by a ``b``-bit exponent counts ``1.25 b``; a larger key counts
  ``(bits / 2048) ** 2`` per multiplication). About 15 µs each on one core, so the
  default budget of 4,000,000 is about a minute.
* **CKKS**: ciphertext operations at ``N = 8192`` (a product with a plaintext or a
  rotation counts 1, a ciphertext product 2, an addition 0.05; a larger ring counts
  ``N / 8192`` per operation). About 2 ms each, so the default 30,000 is about a minute.

Keys under 2048 bits are refused unless tests opt in: ``paillier.keygen(..., force=True)``
marks the key it makes, and a node accepts small keys from peers only while the
environment variable ``VEIL_HE_INSECURE_KEYS=1`` is set (``tests/he/conftest.py`` sets it;
never set it on a real node).

Example:
    >>> from veil.he import limits
    >>> limits.current().paillier_work
    4000000
    >>> with limits.override(paillier_work=10):
    ...     limits.current().paillier_work
    10
    >>> limits.current().paillier_work
    4000000
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["HELimits", "configure", "current", "insecure_keys_allowed", "override"]

#: The environment variable that lets a node accept Paillier keys under 2048 bits (tests).
INSECURE_KEYS_ENV = "VEIL_HE_INSECURE_KEYS"


@dataclass(frozen=True, slots=True)
class HELimits:
    """Limits on one HE call on a node (all checked from public facts, before computing).

    Attributes:
        min_paillier_bits: smallest Paillier modulus accepted (NIST SP 800-57: 2048 bits
            for 112-bit security); smaller only with the test opt-in.
        max_paillier_bits: largest Paillier modulus a node accepts from a peer (a larger
            one multiplies the cost of every operation by ``(bits / 2048) ** 2``).
        max_result_elements: most elements one op may produce.
        max_elements: most elements in one received encrypted tensor.
        paillier_work: most modular multiplications (2048-bit equivalents) per call.
        ckks_work: most CKKS ciphertext operations (N=8192 equivalents) per call.
    """

    min_paillier_bits: int = 2048
    max_paillier_bits: int = 4096
    max_result_elements: int = 1 << 22
    max_elements: int = 1 << 24
    paillier_work: int = 4_000_000
    ckks_work: int = 30_000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if type(v) is not int or v < 1:
                raise ValueError(f"HELimits.{f.name} must be a positive int, got {v!r}")


_current = HELimits()


def current() -> HELimits:
    """The limits in force."""
    return _current


def configure(**changes: Any) -> HELimits:
    """Change some limits for the whole process; returns the previous ones.

    Example:
        >>> old = configure(ckks_work=60_000)
        >>> current().ckks_work, old.ckks_work
        (60000, 30000)
        >>> _ = configure(**{"ckks_work": old.ckks_work})
    """
    global _current
    previous = _current
    try:
        _current = replace(_current, **changes)
    except TypeError:
        names = [f.name for f in fields(HELimits)]
        raise ValueError(f"unknown HE limit in {sorted(changes)}; the limits are {names}") from None
    return previous


@contextmanager
def override(**changes: Any) -> Iterator[HELimits]:
    """Change some limits inside a ``with`` block (tests, one-off large jobs)."""
    previous = configure(**changes)
    try:
        yield _current
    finally:
        configure(**{f.name: getattr(previous, f.name) for f in fields(HELimits)})


def insecure_keys_allowed() -> bool:
    """Whether this process accepts Paillier keys under ``min_paillier_bits`` from peers
    (``VEIL_HE_INSECURE_KEYS=1``: tests only)."""
    return os.environ.get(INSECURE_KEYS_ENV, "") == "1"
