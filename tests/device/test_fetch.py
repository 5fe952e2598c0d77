"""veil.device.fetch: a device downloads a hosted model over REST, checks it, predicts locally."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import veil
from veil.device import fetch, list_models, login, sha256_of
from veil.errors import (
    AuthenticationError,
    ConnectError,
    IntegrityError,
    InvalidRequest,
    ObjectNotFound,
)
from veil.node import Node
from veil.node.server import serve_in_thread

OWNER, OWNER_PW = "owner@hosting.test", "owner-password-9"
DEVICE, DEVICE_PW = "phone-17@hosting.test", "device-password-9"


@dataclass
class Hosted:
    url: str
    owner: Any
    model: nn.Module
    path: Path

    def fetches(self) -> int:
        return sum(e.action == "models.fetch" for e in self.owner.audit(10_000))


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Hosted]:
    """A node server hosting model ``clf`` (versions 1 and 2) and a device's account."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = veil.export(model, tmp_path / "clf.onnx", torch.randn(1, 4))
    node = Node("hospital", owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(DEVICE, DEVICE_PW)
    with serve_in_thread(node) as url:
        owner = veil.connect(url, email=OWNER, password=OWNER_PW)
        veil.models.publish(owner, "clf", veil.export(nn.Linear(4, 3), tmp_path / "v1.onnx",
                                                      torch.randn(1, 4)), version=1)  # fmt: skip
        veil.models.publish(owner, "clf", path, version=2, description="4 features, 3 classes")
        try:
            yield Hosted(url, owner, model, path)
        finally:
            owner.close()


def test_a_device_fetches_the_latest_and_predicts_like_torch(hosted: Hosted) -> None:
    x = torch.randn(5, 4)

    p = fetch(hosted.url, "clf", email=DEVICE, password=DEVICE_PW)

    assert p.sha256 == sha256_of(hosted.path.read_bytes())
    assert np.abs(p.predict(x.numpy()) - hosted.model(x).detach().numpy()).max() <= 1e-5
    (entry,) = [e for e in hosted.owner.audit(100) if e.action == "models.fetch"]
    assert entry.user == DEVICE and entry.detail.startswith("clf version 2: sha256=")


def test_a_token_a_version_and_the_list(hosted: Hosted) -> None:
    token = login(hosted.url, DEVICE, DEVICE_PW)

    v1 = fetch(hosted.url, "clf", 1, token=token)
    listed = list_models(hosted.url, token=token)

    assert [(m["name"], m["version"]) for m in listed] == [("clf", "1"), ("clf", "2")]
    assert listed[1]["description"] == "4 features, 3 classes"
    assert v1.sha256 == listed[0]["sha256"] != listed[1]["sha256"]


def test_the_rest_routes_need_a_login_and_state_the_hash(hosted: Hosted) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(hosted.url + "/api/v1/models/clf")
    assert err.value.code == 401
    token = login(hosted.url, DEVICE, DEVICE_PW)
    req = urllib.request.Request(hosted.url + "/api/v1/models/clf/2",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(req) as resp:
        body, headers = resp.read(), resp.headers
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Veil-SHA256"] == sha256_of(body) == sha256_of(hosted.path.read_bytes())
    assert headers["X-Veil-Model-Version"] == "2"


def test_clear_errors(hosted: Hosted) -> None:
    with pytest.raises(ObjectNotFound, match=r"hosts no model 'nope'; it hosts \['clf'\]"):
        fetch(hosted.url, "nope", email=DEVICE, password=DEVICE_PW)
    with pytest.raises(ObjectNotFound, match=r"no version '7'"):
        fetch(hosted.url, "clf", 7, email=DEVICE, password=DEVICE_PW)
    with pytest.raises(AuthenticationError):
        fetch(hosted.url, "clf", email=DEVICE, password="wrong-password")
    with pytest.raises(AuthenticationError, match="give token"):
        fetch(hosted.url, "clf")
    with pytest.raises(InvalidRequest, match="model name '../x' is not valid"):
        fetch(hosted.url, "../x", token="t")
    with pytest.raises(ConnectError):
        fetch("http://127.0.0.1:9", "clf", token="t", timeout=5)


# ------------------------------------------------------------------ a man in the middle
@contextlib.contextmanager
def proxy(target: str, alter: Callable[[bytes, dict[str, str]], bytes]) -> Iterator[str]:
    """An HTTP proxy in front of ``target`` that passes logins and lists through, and hands
    every model download to ``alter(body, headers)`` (which may change both; header names
    in lower case)."""

    class Handler(BaseHTTPRequestHandler):
        def _forward(self, body: bytes | None) -> None:
            req = urllib.request.Request(target + self.path, data=body, method=self.command,
                                         headers=dict(self.headers))  # fmt: skip
            try:
                with urllib.request.urlopen(req) as resp:
                    status, data, got = resp.status, resp.read(), resp.headers
            except urllib.error.HTTPError as exc:
                status, data, got = exc.code, exc.read(), exc.headers
            headers = {k.lower(): v for k, v in got.items()}
            if self.path.startswith("/api/v1/models/") and status == 200:
                data = alter(data, headers)
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._forward(None)

        def do_POST(self) -> None:  # noqa: N802
            self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _flip_a_weight(body: bytes, headers: dict[str, str]) -> bytes:
    out = bytearray(body)
    out[len(out) // 2] ^= 0x40
    return bytes(out)


def _swap_model_and_hash(evil: bytes) -> Callable[[bytes, dict[str, str]], bytes]:
    def alter(body: bytes, headers: dict[str, str]) -> bytes:
        headers["x-veil-sha256"] = sha256_of(evil)  # consistent, but not what the node said
        return evil

    return alter


def test_a_tampered_download_is_refused(hosted: Hosted) -> None:
    with proxy(hosted.url, _flip_a_weight) as mitm:
        with pytest.raises(IntegrityError, match="altered or corrupted on the way"):
            fetch(mitm, "clf", email=DEVICE, password=DEVICE_PW)
    with proxy(hosted.url, lambda body, headers: (headers.pop("x-veil-sha256"), body)[1]) as mitm:
        with pytest.raises(IntegrityError, match="without its SHA-256"):
            fetch(mitm, "clf", email=DEVICE, password=DEVICE_PW)


def test_a_pinned_hash_catches_a_consistent_swap(hosted: Hosted, tmp_path: Path) -> None:
    """A proxy that swaps model and hash together passes the node-stated check; a device
    that pinned the hash it expects (Predictor(sha256=...)) still refuses it."""
    evil = veil.export(nn.Linear(4, 3), tmp_path / "evil.onnx", torch.randn(1, 4)).read_bytes()
    expected = sha256_of(hosted.path.read_bytes())
    with proxy(hosted.url, _swap_model_and_hash(evil)) as mitm:
        with pytest.raises(IntegrityError, match=expected[:16]):
            fetch(mitm, "clf", 2, email=DEVICE, password=DEVICE_PW, sha256=expected)


# ------------------------------------------------------------------ the device's cache
def test_a_cached_version_is_used_offline_and_a_damaged_one_is_fetched_again(
    hosted: Hosted, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    token = login(hosted.url, DEVICE, DEVICE_PW)
    first = fetch(hosted.url, "clf", 2, token=token, cache_dir=cache)
    (cached,) = (cache / "clf" / "2").glob("*.onnx")

    again = fetch("http://127.0.0.1:9", "clf", 2, token=token, cache_dir=cache)  # no node needed
    fetches = hosted.fetches()
    cached.write_bytes(cached.read_bytes()[:-1] + b"\x00")  # the file was damaged
    third = fetch(hosted.url, "clf", 2, token=token, cache_dir=cache)

    assert first.sha256 == again.sha256 == third.sha256 == cached.stem
    assert hosted.fetches() == fetches + 1  # downloaded again
    assert sha256_of(cached.read_bytes()) == cached.stem


def test_the_latest_is_always_asked_and_cached_under_its_version(
    hosted: Hosted, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    fetch(hosted.url, "clf", email=DEVICE, password=DEVICE_PW, cache_dir=cache)
    fetch(hosted.url, "clf", email=DEVICE, password=DEVICE_PW, cache_dir=cache)

    assert hosted.fetches() == 2
    assert [p.parent.name for p in cache.glob("clf/*/*.onnx")] == ["2"]
