"""Lazy imports of the optional cryptography libraries behind ``veil[he]``."""

from __future__ import annotations

from typing import Any

_HINT = "install with: pip install 'veil[he]'"


def gmpy2() -> Any:
    """The ``gmpy2`` module (big-integer arithmetic for Paillier)."""
    try:
        import gmpy2 as mod
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"Paillier encryption needs gmpy2; {_HINT}") from exc
    return mod


def tenseal() -> Any:
    """The ``tenseal`` module (CKKS on Microsoft SEAL)."""
    try:
        import tenseal as mod
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"CKKS encryption needs TenSEAL; {_HINT}") from exc
    return mod
