"""Workflow 3: Paillier federated sum.

Three hospitals each hold a local model update (100,000 parameters). A coordinator
holds the Paillier key pair and publishes the public key. Each hospital encrypts its
update under it (packed: 31 values per ciphertext) and uploads the ciphertexts to an
aggregator's node; the aggregator adds them without being able to read any of them;
the coordinator decrypts only the total. The coordinator never receives an individual
update (the aggregator must not collude with it: see docs/he.md).

Run: ``python examples/he_federated_sum.py``.
"""

from __future__ import annotations

import time

import torch

import veil
from veil.he import paillier


def run(parties: int = 3, size: int = 100_000, key_bits: int = 2048) -> dict[str, object]:
    pk, sk = paillier.keygen(key_bits, force=key_bits < 2048)  # the coordinator's keys

    aggregator_node = veil.Node("aggregator", owner_email="agg@fl.example",
                                owner_password="aggregator-pw")  # fmt: skip
    aggregator = veil.VirtualWorker(node=aggregator_node)
    updates, ids = [], []
    for i in range(parties):
        # Each hospital: its own data, its own account on the aggregator.
        update = torch.randn(size, generator=torch.Generator().manual_seed(i)) * 0.01
        updates.append(update)
        aggregator.create_user(f"h{i}@fl.example", f"hospital-{i}-pw", role="data_scientist")
        hospital = aggregator.login(f"h{i}@fl.example", f"hospital-{i}-pw")
        start = time.perf_counter()
        enc = paillier.encrypt(update, pk, pack=True)
        ptr = enc.send(hospital)
        ptr._owned = False  # the upload outlives this loop
        ids.append(ptr.id)
        print(f"hospital {i}: {size} values -> {enc.ciphertexts} ciphertexts, "
              f"encrypted and sent in {time.perf_counter() - start:.1f}s")  # fmt: skip

    # The aggregator (the node's owner) adds the uploads; it holds no private key.
    encrypted = [aggregator.pointer(i) for i in ids]
    total = encrypted[0]
    for ptr in encrypted[1:]:
        total = total + ptr
    ciphertext = total.get(context=pk)  # handed to the coordinator

    # The coordinator decrypts the total only.
    result = ciphertext.decrypt(sk)
    expected = torch.stack(updates).sum(0).double()
    err = float((result - expected).abs().max())
    print(
        f"decrypted sum of {parties} updates; largest difference from the plaintext sum: {err:.2e}"
    )
    return {"max_error": err, "total": ciphertext, "keys": (pk, sk), "node": aggregator_node}


if __name__ == "__main__":
    run()
