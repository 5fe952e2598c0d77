"""Shared HE fixtures: keys are slow to make, so one per session (they hold no state)."""

from __future__ import annotations

import os

import pytest

# The fixtures' 512-bit keys are far below the 2048 bits a node accepts from a peer: this
# suite opts in (docs/he.md, veil.he.limits). Never set it on a real node.
os.environ["VEIL_HE_INSECURE_KEYS"] = "1"

pytest.importorskip("gmpy2", reason="Paillier needs gmpy2: pip install 'veil[he]'")


@pytest.fixture(scope="session")
def paillier_keys():
    from veil.he import paillier

    return paillier.keygen(512, force=True)


@pytest.fixture(scope="session")
def other_paillier_keys():
    from veil.he import paillier

    return paillier.keygen(512, force=True)


@pytest.fixture(scope="session")
def ckks_ctx():
    pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")
    from veil.he import ckks

    return ckks.context()


@pytest.fixture(scope="session")
def other_ckks_ctx():
    pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")
    from veil.he import ckks

    return ckks.context(galois_keys=False)
