"""Model hosting (veil.models): owners publish, users fetch by version, devices predict locally.

Every test runs on an in-process node and on a real server; the attacks are here too: a
scientist cannot publish or overwrite, a version never changes, a damaged model is never
loaded, and the audit log records fetches (never inputs, which stay on the device).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from torch import nn

import veil
from veil.device import sha256_of
from veil.errors import IntegrityError, InvalidRequest, ObjectNotFound, PermissionDenied
from veil.models.node import CHUNK
from veil.node import Node, capability
from veil.node.store.sql import SQLStore
from veil.serde.models import ModelInfo, PublishModel

OWNER = "owner@test.local"  # the owner of tests/conftest.py's nodes


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small models as ONNX files, exported once (an export takes a second or two)."""
    out = tmp_path_factory.mktemp("onnx")
    return {k: veil.export(_model(i), out / f"{k}.onnx", torch.randn(1, 5))
            for i, k in enumerate("abc")}  # fmt: skip


def test_owner_publishes_and_a_scientist_fetches_and_predicts(deployment) -> None:
    model = _model(0)
    info = veil.models.publish(deployment.owner, "triage", model, torch.randn(1, 5), version=1,
                               description="5 vitals -> 2 scores")  # fmt: skip
    sci = deployment.scientist()
    x = torch.randn(3, 5)

    got = veil.models.fetch(sci, "triage").predict(x.numpy())

    assert (info.name, info.version, info.publisher) == ("triage", "1", OWNER)
    assert np.abs(got - model(x).detach().numpy()).max() <= 1e-5
    listed = veil.models.list(sci)
    assert [(m.name, m.version, m.sha256) for m in listed] == [("triage", "1", info.sha256)]
    assert listed[0].description == "5 vitals -> 2 scores"


def test_versions_a_file_or_bytes_and_the_latest(deployment, files: dict[str, Path]) -> None:
    v1, v2 = files["a"], files["b"]
    veil.models.publish(deployment.owner, "risk", v1, version="2026.1")  # a path
    veil.models.publish(deployment.owner, "risk", v2.read_bytes(), version="2026.2")  # bytes
    sci = deployment.scientist()

    latest, data = veil.models.download(sci, "risk")
    first, data1 = veil.models.download(sci, "risk", "2026.1")

    assert latest.version == "2026.2" and data == v2.read_bytes()
    assert first.version == "2026.1" and data1 == v1.read_bytes()
    assert sha256_of(data) == latest.sha256
    assert [m.version for m in veil.models.list(sci, "risk")] == ["2026.1", "2026.2"]


def test_a_version_never_changes(deployment, files: dict[str, Path]) -> None:
    path = files["a"]
    first = veil.models.publish(deployment.owner, "m", path, version=1)

    again = veil.models.publish(deployment.owner, "m", path, version=1)  # same bytes: a no-op
    with pytest.raises(InvalidRequest, match="a version never changes"):
        veil.models.publish(deployment.owner, "m", files["b"], version=1)

    assert again == first
    assert len(veil.models.list(deployment.owner)) == 1
    assert veil.models.download(deployment.owner, "m", 1)[1] == path.read_bytes()


def test_a_scientist_cannot_publish_or_overwrite(deployment, files: dict[str, Path]) -> None:
    path = files["a"]
    published = veil.models.publish(deployment.owner, "m", path, version=1)
    sci = deployment.scientist()
    evil = files["b"]

    for name, version in (("m", 1), ("m", 2), ("new", 1)):
        with pytest.raises(PermissionDenied, match="owner or admins publish"):
            veil.models.publish(sci, name, evil, version=version)

    assert veil.models.list(sci) == [published]
    assert veil.models.download(sci, "m")[1] == path.read_bytes()


def test_an_admin_may_publish(deployment, files: dict[str, Path]) -> None:
    admin = deployment.user("admin")

    info = veil.models.publish(admin, "m", files["a"], version="a1")

    assert info.publisher != OWNER and info.publisher.endswith("@test.local")


def test_unknown_models_and_versions_are_clear_errors(deployment, files: dict[str, Path]) -> None:
    veil.models.publish(deployment.owner, "known", files["a"], version=1)
    sci = deployment.scientist()

    with pytest.raises(ObjectNotFound, match=r"hosts no model 'nope'; it hosts \['known'\]"):
        veil.models.fetch(sci, "nope")
    with pytest.raises(ObjectNotFound, match=r"no version '9'; its versions: \['1'\]"):
        veil.models.fetch(sci, "known", 9)


def test_what_is_not_a_model_or_a_name_is_refused(deployment, files: dict[str, Path]) -> None:
    owner = deployment.owner
    with pytest.raises(InvalidRequest, match="not an ONNX file"):
        veil.models.publish(owner, "m", b"PK\x03\x04 a zip, not a model", version=1)
    with pytest.raises(InvalidRequest, match="1 to"):
        veil.models.publish(owner, "m", b"", version=1)
    with pytest.raises(InvalidRequest, match="model name '../etc' is not valid"):
        veil.models.publish(owner, "../etc", files["a"], version=1)
    # the node checks too (a client that skips the check)
    bad = PublishModel("../etc", "1", files["a"].read_bytes())
    with pytest.raises(InvalidRequest, match=r"\$\.name"):
        capability.call(owner, "models", "publish", bad, ModelInfo)
    assert veil.models.list(owner) == []


def test_the_audit_log_has_each_fetch_and_no_inputs(deployment, files: dict[str, Path]) -> None:
    info = veil.models.publish(deployment.owner, "m", files["a"], version=1)
    sci = deployment.scientist()
    secret = np.full((1, 5), 123.456, dtype=np.float32)  # a device's private input

    predictor = veil.models.fetch(sci, "m", 1)
    before = deployment.owner.audit(1000)
    predictor.predict(secret)  # local: the node hears nothing
    after = deployment.owner.audit(1000)

    assert len(after) == len(before)
    fetches = [e for e in after if e.action == "models.fetch"]
    assert len(fetches) == 1
    e = fetches[0]
    assert e.user not in (OWNER, "") and e.detail == f"m version 1: sha256={info.sha256}"
    assert e.objects == [] and e.sources == [] and "123.4" not in repr(after)


def test_a_damaged_model_is_never_served(virtual, files: dict[str, Path]) -> None:
    """White-box: flip a byte of a stored chunk; the node refuses to serve it."""
    veil.models.publish(virtual.owner, "m", files["a"], version=1)
    node = virtual.node
    (key, row), *_ = node.rows(CHUNK).items()
    import base64

    raw = bytearray(base64.b64decode(row["data"]))
    raw[100] ^= 0xFF
    node.put_row(key, CHUNK, {**row, "data": base64.b64encode(bytes(raw)).decode()})

    with pytest.raises(IntegrityError, match="do not match its SHA-256"):
        veil.models.fetch(virtual.scientist(), "m")


def test_a_tampered_reply_is_refused_by_the_client(
    virtual, files: dict[str, Path], monkeypatch
) -> None:
    """A reply whose bytes do not have the hash it states (altered on the way) is not loaded."""
    veil.models.publish(virtual.owner, "m", files["a"], version=1)
    real = capability.call

    def tampering(worker, cap, method, request, reply):  # type: ignore[no-untyped-def]
        got = real(worker, cap, method, request, reply)
        if method == "fetch":
            return msgspec.structs.replace(got, data=got.data[:-1] + bytes([got.data[-1] ^ 1]))
        return got

    monkeypatch.setattr(capability, "call", tampering)
    with pytest.raises(IntegrityError, match="do not match the SHA-256 the node states"):
        veil.models.fetch(virtual.scientist(), "m")


def test_models_survive_a_restart_and_chunks_are_shared(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'n.db'}"
    big = nn.Linear(600, 600)  # 1.4 MB of weights: two chunks
    path = veil.export(big, tmp_path / "big.onnx", torch.randn(1, 600))
    node = Node("n", owner_password="owner-password-1", store=SQLStore(db))
    owner = veil.VirtualWorker(node=node)
    veil.models.publish(owner, "big", path, version=1)
    veil.models.publish(owner, "big", path, version=2)  # the same bytes again
    chunks = len(node.rows(CHUNK))
    node.close()

    again = Node("n", owner_password="owner-password-1", store=SQLStore(db))
    info, data = veil.models.download(veil.VirtualWorker(node=again), "big", 1)

    assert chunks == 2 and data == path.read_bytes() and info.sha256 == sha256_of(data)
    assert [m.version for m in veil.models.list(veil.VirtualWorker(node=again))] == ["1", "2"]
    again.close()


def test_the_device_and_the_node_check_names_by_one_rule() -> None:
    """veil.device cannot import veil.serde (it needs no torch): the two copies must agree."""
    from typing import get_args

    from veil.device import MODEL_NAME, MODEL_VERSION
    from veil.serde.models import ModelName, ModelVersion

    assert get_args(ModelName)[1].pattern == MODEL_NAME
    assert get_args(ModelVersion)[1].pattern == MODEL_VERSION


def test_a_plan_is_published_through_veil_export(virtual) -> None:
    @veil.plan
    def squash(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * 3)

    squash.build(torch.randn(1, 4))
    veil.models.publish(virtual.owner, "squash", squash, torch.randn(1, 4), version=1)

    got = veil.models.fetch(virtual.scientist(), "squash").predict(np.ones((2, 4)))

    assert np.abs(got - np.tanh(3.0)).max() <= 1e-5
