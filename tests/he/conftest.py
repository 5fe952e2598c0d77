"""Shared HE fixtures: keys are slow to make, so one per session (they hold no state)."""

from __future__ import annotations

import pytest

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
