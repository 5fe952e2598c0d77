"""Fetch a model a node hosts, over its REST API with the standard library (no torch).

A device logs in (``POST /api/v1/login``), downloads the model's ONNX bytes
(``GET /api/v1/models/{name}[/{version}]``), checks them against the SHA-256 the node states
(``X-Veil-SHA256``) and predicts locally: no input ever leaves the device. The node records
each fetch (who, which model, its hash) in its audit log.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from veil.device.predictor import Predictor, sha256_of
from veil.errors import (
    AuthenticationError,
    ConnectError,
    IntegrityError,
    InvalidRequest,
    Timeout,
    VeilError,
    error_from_code,
)

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "check_name",
    "check_version",
    "fetch",
    "list_models",
    "login",
]

#: What a hosted model's name may be (the node refuses others; ``veil.serde.models`` too).
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
#: What a hosted model's version may be (``3``, ``1.2.0``, ``2026-12-03``...).
MODEL_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
_HASH = re.compile(r"^[0-9a-f]{64}$")


def login(url: str, email: str, password: str, *, timeout: float = 30.0) -> str:
    """Log in to a node and return a bearer token for its REST API.

    Raises:
        AuthenticationError: wrong email or password (or too many attempts).
        ConnectError: the node cannot be reached.
    """
    body = json.dumps({"email": email, "password": password}).encode()
    data, _ = _request(url, "/api/v1/login", None, timeout, body)
    try:
        return str(json.loads(data)["token"])
    except (ValueError, KeyError, TypeError):
        raise VeilError(f"{url} did not answer the login like a veil node") from None


def list_models(url: str, *, token: str | None = None, email: str | None = None,
                password: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:  # fmt: skip
    """The models a node hosts: name, version, sha256, size, created, publisher, description.

    Log in with ``token`` (from :func:`login`) or ``email`` and ``password``.
    """
    token = _token(url, token, email, password, timeout)
    data, _ = _request(url, "/api/v1/models", token, timeout)
    items = json.loads(data)["items"]
    return [dict(i) for i in items]


def fetch(url: str, name: str, version: str | int | None = None, *, token: str | None = None,
          email: str | None = None, password: str | None = None,
          sha256: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
          threads: int = 1, timeout: float = 60.0) -> Predictor:  # fmt: skip
    """Download a model a node hosts, check its hash and load it for local prediction.

    Args:
        url: the node's base URL (``http://10.0.0.5:8765``).
        name: the model's name; ``version``: one of its versions (default: the latest
            published).
        token: a bearer token (:func:`login`); or ``email`` and ``password`` to log in.
        sha256: the hash this device expects, if it knows it (pinned, e.g. shipped with the
            app): a model with another is refused even if the node states its hash.
        cache_dir: keep downloaded models here (``<name>/<version>/<sha256>.onnx``); a named
            version found there is loaded without asking the node (versions never change),
            after its bytes are checked against its hash.
        threads: onnxruntime's intra-op threads.

    Returns:
        A :class:`Predictor` of the model.

    Raises:
        IntegrityError: the bytes received do not have the hash the node states (or the
            one pinned with ``sha256``).
        ObjectNotFound: the node hosts no such model or version (the message lists them).
        AuthenticationError: bad credentials or token.
        ConnectError, Timeout: the node cannot be reached, or did not answer in time.
    """
    check_name(name)
    ver = None if version is None else check_version(version)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and ver is not None:
        hit = _cached(cache / name / ver)
        if hit is not None:
            return Predictor(hit[0], sha256=sha256 or hit[1], threads=threads)
    token = _token(url, token, email, password, timeout)
    path = "/api/v1/models/" + urllib.parse.quote(name, safe="")
    if ver is not None:
        path += "/" + urllib.parse.quote(ver, safe="")
    data, headers = _request(url, path, token, timeout)
    stated = (headers.get("X-Veil-SHA256") or "").strip().lower()
    if not _HASH.match(stated):
        raise IntegrityError(f"{url} sent model {name!r} without its SHA-256; refused")
    got = sha256_of(data)
    if got != stated:
        raise IntegrityError(
            f"model {name!r} from {url}: the bytes received have SHA-256 {got}, the node "
            f"states {stated}: altered or corrupted on the way; nothing was loaded"
        )
    if sha256 is not None and stated != sha256.strip().lower():
        raise IntegrityError(
            f"model {name!r} from {url} has SHA-256 {stated}, not the {sha256.strip().lower()} "
            "this device expects; nothing was loaded"
        )
    predictor = Predictor(data, sha256=stated, threads=threads)
    if cache is not None:
        served = check_version(headers.get("X-Veil-Model-Version") or "")
        _store(cache / name / served, stated, data)
    return predictor


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (:data:`MODEL_NAME`), else InvalidRequest.

    Example:
        >>> check_name("lenet-5")
        'lenet-5'
        >>> check_name("../etc")
        Traceback (most recent call last):
        ...
        veil.errors.InvalidRequest: model name '../etc' is not valid: letters, digits, '.', '_' and '-', starting with a letter or digit
    """
    return _check(name, MODEL_NAME, "name")


def check_version(version: str | int) -> str:
    """A version as text (``3`` -> ``"3"``) if valid (:data:`MODEL_VERSION`), else
    InvalidRequest.

    Example:
        >>> check_version(3), check_version("1.2.0")
        ('3', '1.2.0')
    """
    return _check(str(version), MODEL_VERSION, "version")


def _check(value: str, pattern: str, what: str) -> str:
    if not isinstance(value, str) or not re.match(pattern, value):
        raise InvalidRequest(
            f"model {what} {str(value)[:80]!r} is not valid: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _cached(folder: Path) -> tuple[bytes, str] | None:
    """The cached bytes and hash of one version, if a copy that passes its hash is there
    (one that fails is removed)."""
    for f in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
        digest = f.stem
        data = f.read_bytes()
        if _HASH.match(digest) and sha256_of(data) == digest:
            return data, digest
        f.unlink(missing_ok=True)
    return None


def _store(folder: Path, digest: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{digest}.onnx.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / f"{digest}.onnx")


def _token(url: str, token: str | None, email: str | None, password: str | None,
           timeout: float) -> str:  # fmt: skip
    if token:
        return token
    if email is None or password is None:
        raise AuthenticationError("give token=..., or email=... and password=... to log in")
    return login(url, email, password, timeout=timeout)


def _request(url: str, path: str, token: str | None, timeout: float,
             body: bytes | None = None) -> tuple[bytes, Any]:  # fmt: skip
    """GET (or POST ``body`` as JSON) ``url + path``; a node's error is raised as its class."""
    base = url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise InvalidRequest(f"a node's URL starts with http:// or https://, got {url!r}")
    req = urllib.request.Request(base + path, data=body, method="POST" if body else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        raise _node_error(exc) from None
    except TimeoutError:
        raise Timeout(f"{base} did not answer within {timeout:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise Timeout(f"{base} did not answer within {timeout:g} s") from None
        raise ConnectError(f"cannot reach {base}: {exc.reason}") from None


def _node_error(exc: urllib.error.HTTPError) -> VeilError:
    try:
        err = json.loads(exc.read())["error"]
        return error_from_code(str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return VeilError(f"HTTP {exc.code} from {exc.url}: {exc.reason}")
