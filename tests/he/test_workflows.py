"""The three HE workflows (examples/he_*.py) run end to end and meet their guarantees."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

from veil.he import paillier

pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")
pytest.importorskip("sklearn", reason="the inference example uses scikit-learn's data")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name))


def test_encrypted_features_plaintext_logistic_regression(capsys) -> None:
    out = example("he_encrypted_inference.py")["run"]("logistic", samples=2)
    assert out["max_error"] < 1e-3


@pytest.mark.slow
def test_encrypted_features_plaintext_mlp_with_square_activation(capsys) -> None:
    out = example("he_encrypted_inference.py")["run"]("mlp", samples=1)
    assert out["max_error"] < 1e-3


def test_encrypted_model_evaluated_by_an_untrusted_party(capsys) -> None:
    out = example("he_encrypted_model.py")["run"](key_bits=512)
    assert out["max_error"] < 1e-6
    pk, sk = out["keys"]
    # Everything the bank's node holds: its own data, ciphertexts, the public key.
    for rec in out["node"]._objects.values():
        assert isinstance(rec.value, torch.Tensor | paillier.EncryptedTensor | paillier.PublicKey)
        if isinstance(rec.value, torch.Tensor):
            assert rec.asset_of == "customers"
    bank_copy = out["bank_copy"]
    _, bank_sk = paillier.keygen(512, force=True)
    with pytest.raises(ValueError, match="matching private key"):
        bank_copy.decrypt(bank_sk)
    assert torch.allclose(bank_copy.decrypt(sk), out["weights"], atol=1e-6)  # only the owner


def test_paillier_federated_sum(capsys) -> None:
    out = example("he_federated_sum.py")["run"](parties=3, size=500, key_bits=512)
    assert out["max_error"] < 1e-6
    pk, _ = out["keys"]
    assert out["total"].packed and out["total"].offsets == 3
    for rec in out["node"]._objects.values():  # the aggregator holds no key that decrypts
        assert not isinstance(rec.value, paillier.PrivateKey)
    assert "decrypted sum of 3 updates" in capsys.readouterr().out


def test_the_first_ckks_broadcasting_ops_do_not_import_sympy() -> None:
    """torch.broadcast_shapes imports sympy on its first call: CKKS tensors check
    broadcasting with numpy's (same) rules (the Paillier half: tests/he/test_paillier.py)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from veil.he import ckks\n"
        "ctx = ckks.context(galois_keys=False)\n"
        "c = (ckks.encrypt(torch.tensor([[1.0, 2.0]]), ctx) + torch.tensor([3.0, 4.0])).decrypt()\n"
        "assert torch.allclose(c, torch.tensor([[4.0, 6.0]], dtype=c.dtype), atol=1e-3), c\n"
        "assert 'sympy' not in sys.modules, 'sympy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
