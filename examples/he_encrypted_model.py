"""Workflow 2: encrypted model, plaintext data (Paillier).

A model owner lets a bank score its customers with a linear credit model without
handing over the weights. The owner encrypts the weights under its Paillier key and
sends them to the bank's node. The bank's customer table is a private dataset there:
the model is evaluated on it where it lives (``X @ w_enc + b``), producing encrypted
scores. The bank's node never holds the weights in the clear (only ciphertexts and the
public key), and the scores are derived from the bank's private data, so the bank
approves their release before the owner decrypts them. Results of products with
plaintext data are rerandomized on the node, so the ciphertexts carry nothing about
the customers beyond the scores.

Run: ``python examples/he_encrypted_model.py``.
"""

from __future__ import annotations

import torch

import veil
from veil.he import paillier


def run(customers: int = 6, features: int = 5, key_bits: int = 2048) -> dict[str, object]:
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(features, generator=g, dtype=torch.float64)
    bias = 0.25
    table = torch.randn(customers, features, generator=g, dtype=torch.float64)

    # The bank's node, its private customer table, and an account for the model owner.
    bank = veil.Node("bank", owner_email="owner@bank.example", owner_password="bank-owner-pw")
    bank_owner = veil.VirtualWorker(node=bank)
    bank_owner.datasets.create("customers", private=table, mock=torch.zeros_like(table))
    bank_owner.create_user("models@vendor.example", "vendor-password", role="data_scientist")
    vendor = bank_owner.login("models@vendor.example", "vendor-password")

    # The model owner's side: keys stay here; encrypted weights travel.
    pk, sk = paillier.keygen(key_bits, force=key_bits < 2048)
    w_enc = paillier.encrypt(weights, pk).send(vendor)
    scores = vendor.datasets["customers"].private @ w_enc + bias  # runs on the bank's node
    print(f"encrypted scores on the bank's node: {scores}")

    # The bank sees only ciphertexts: fetching the weights gives it nothing to read.
    held = bank_owner.pointer(w_enc.id).get(context=pk)
    print(f"what the bank holds: {held}")

    request = scores.request("credit scores for the bank's customers")
    bank_owner.requests.approve(request.id, "scores only; the vendor keeps its model")
    result = scores.decrypt(sk)
    expected = table @ weights + bias
    err = float((result - expected).abs().max())
    print(
        f"decrypted scores: {result.numpy().round(4)}\nplaintext check:  {expected.numpy().round(4)}"
    )
    print(f"largest difference: {err:.2e}")
    return {"max_error": err, "bank_copy": held, "keys": (pk, sk), "node": bank, "weights": weights}


if __name__ == "__main__":
    run()
