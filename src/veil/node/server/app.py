"""The node server: FastAPI app with REST (login, datasets, requests, users, audit) and a WebSocket op stream."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import msgspec
from fastapi import (
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Query,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from veil.errors import AuthenticationError, RateLimited, VeilError
from veil.node.capability import public_info
from veil.node.framing import Assembler, split_frame
from veil.node.node import Node
from veil.node.server.limits import BodyLimit, LoginLimiter, ServerLimits
from veil.node.users import Session
from veil.serde import codec
from veil.serde.messages import (
    Call,
    CapabilityCall,
    CapabilityReply,
    CreateUser,
    DecideRequest,
    ErrorReply,
    GetAudit,
    ListDatasets,
    ListRequests,
    ListUsers,
    Reply,
    Request,
    RunOp,
    Value,
)
from veil.serde.models import FetchModel, ListModels, ModelData, ModelList
from veil.serde.plans import ListPlans, ShowPlan
from veil.serde.tensors import tensor_from_data
from veil.version import WIRE_VERSION, __version__

log = logging.getLogger("veil.server")

#: Frames above this size are handled in a worker thread so the event loop keeps serving.
INLINE_LIMIT = 1 << 20

_STATUS = {
    "authentication_failed": 401,
    "session_expired": 401,
    "rate_limited": 429,
    "permission_denied": 403,
    "destination_not_approved": 403,
    "transport_error": 502,
    "connect_error": 502,
    "timeout": 504,
    "op_not_allowed": 403,
    "budget_exceeded": 403,
    "object_not_found": 404,
    "invalid_request": 400,
    "serde_error": 400,
    "message_too_large": 413,
    "version_mismatch": 400,
}


class LoginBody(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class DecisionBody(BaseModel):
    note: str = Field(default="", max_length=2000)


class UserBody(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    role: str = "data_scientist"
    name: str = Field(default="", max_length=200)


class DealerBody(BaseModel):
    name: str = Field(max_length=64)
    key: str = Field(max_length=64, description="the dealer node's MPC public key (64 hex digits)")
    url: str = Field(default="", max_length=2000, description="where the key was read from")


class PushBody(BaseModel):
    id: int
    destination: str = Field(max_length=2000)
    ticket: str = Field(max_length=200)
    requires_grad: bool = False


class PeerBody(BaseModel):
    name: str = Field(max_length=64)
    url: str = Field(max_length=2000)


def _json(reply: Reply) -> Any:
    if isinstance(reply, ErrorReply):
        raise HTTPException(
            _STATUS.get(reply.code, 500), {"code": reply.code, "message": reply.message}
        )
    return msgspec.to_builtins(reply, enc_hook=lambda o: None)


def create_app(node: Node, *, chunk_bytes: int = codec.CHUNK_BYTES, bulk_port: int | None = None,
               limits: ServerLimits | None = None) -> FastAPI:  # fmt: skip
    """The ASGI app serving ``node``.

    REST under ``/api/v1`` (JSON) for people and tools; ``/api/v1/ws`` carries veil
    frames (the same messages a VirtualWorker exchanges) for the Python client;
    ``bulk_port``, when given, is advertised for large frames (:mod:`.bulk`). ``limits``
    (:class:`ServerLimits`) bounds login guessing and request bodies.

    Example:
        >>> node = Node("n", owner_email="o@n.org", owner_password="password-1")
        >>> create_app(node).title
        'veil node n'
    """
    limits = limits or ServerLimits()
    app = FastAPI(title=f"veil node {node.name}", version=__version__)
    app.state.node = node
    # Facts capabilities publish (e.g. "mpc": the node's MPC public key, written to its
    # store before it is shown): fixed while the node runs, so read once, here, and the
    # async info endpoint never waits for the node.
    capabilities = public_info(node)
    app.state.login_limiter = limiter = LoginLimiter(limits)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes,
                       paths={"/api/v1/transfer/receive": node.max_message_bytes})  # fmt: skip

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        detail = (
            exc.detail
            if isinstance(exc.detail, dict)
            else {"code": "error", "message": str(exc.detail)}
        )
        return JSONResponse({"error": detail}, status_code=exc.status_code)

    def session(authorization: str = Header(default="")) -> Session:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, {"code": "authentication_failed",
                                      "message": "missing 'Authorization: Bearer <token>'; POST /api/v1/login first"})  # fmt: skip
        try:
            return node.session_for_token(token)
        except AuthenticationError as exc:
            raise HTTPException(401, {"code": exc.code, "message": str(exc)}) from None

    def run(s: Session, msg: Request) -> Any:
        return _json(node.handle(s, Call(msg)))

    def run_json_op(s: Session, op: str, *args: Any) -> Any:
        """A capability's node op that answers JSON (UTF-8 bytes in a uint8 tensor)."""
        reply = node.handle(s, Call(RunOp(op, list(args), {})))
        if not isinstance(reply, Value):
            return _json(reply)  # an error: raised as its HTTP status
        return json.loads(tensor_from_data(reply.value, copy=True).numpy().tobytes())  # type: ignore[arg-type]

    @app.get("/health")
    async def health() -> dict[str, Any]:  # on the event loop: never queued behind the node
        return {"ok": True}

    @app.get("/api/v1/info")
    async def info() -> dict[str, Any]:
        return {
            "name": node.name,
            "version": __version__,
            "wire_version": WIRE_VERSION,
            "max_message_bytes": node.max_message_bytes,
            "bulk_port": bulk_port,
            **capabilities,
        }

    @app.post("/api/v1/login")
    def login(body: LoginBody, request: HTTPRequest) -> Any:
        address = request.client.host if request.client else ""
        try:
            limiter.attempt(body.email, address)  # counted before the password is checked
            s = node.login(body.email, body.password)
        except RateLimited as exc:
            wait = str(math.ceil(exc.retry_after or 1))
            return JSONResponse(
                {"error": {"code": exc.code, "message": str(exc)}},
                status_code=429,
                headers={"Retry-After": wait},
            )
        except AuthenticationError as exc:
            raise HTTPException(401, {"code": exc.code, "message": str(exc)}) from None
        limiter.succeeded(body.email, address)
        return {"token": node.issue_token(s), "user": {"email": s.email, "role": s.role}}

    @app.get("/api/v1/datasets")
    def datasets(s: Session = Depends(session)) -> Any:
        out = run(s, ListDatasets())
        for ds in out["items"]:
            for asset in ds["assets"]:
                mock = asset.pop("mock")
                asset["shape"], asset["dtype"] = mock["shape"], mock["dtype"]
        return out

    @app.get("/api/v1/requests")
    def requests(status: str | None = Query(default=None), s: Session = Depends(session)) -> Any:
        return run(s, ListRequests(status))

    @app.post("/api/v1/requests/{request_id}/approve")
    def approve(
        request_id: int, body: DecisionBody | None = None, s: Session = Depends(session)
    ) -> Any:
        return run(s, DecideRequest(request_id, True, body.note if body else ""))

    @app.post("/api/v1/requests/{request_id}/deny")
    def deny(
        request_id: int, body: DecisionBody | None = None, s: Session = Depends(session)
    ) -> Any:
        return run(s, DecideRequest(request_id, False, body.note if body else ""))

    @app.get("/api/v1/users")
    def users(s: Session = Depends(session)) -> Any:
        return run(s, ListUsers())

    @app.post("/api/v1/users")
    def create_user(body: UserBody, s: Session = Depends(session)) -> Any:
        return run(s, CreateUser(body.email, body.password, body.role, body.name))

    @app.post("/api/v1/users/{email}/revoke-sessions")
    def revoke_sessions(email: str, s: Session = Depends(session)) -> dict[str, Any]:
        """End every session of a user (yourself; owners and admins: anyone)."""
        try:
            revoked = node.revoke_sessions(s, email)
        except VeilError as exc:
            raise HTTPException(
                _STATUS.get(exc.code, 500), {"code": exc.code, "message": str(exc)}
            ) from None
        return {"email": email, "revoked": revoked}

    @app.get("/api/v1/audit")
    def audit(
        limit: int = Query(default=100, ge=0, le=100_000), s: Session = Depends(session)
    ) -> Any:
        return run(s, GetAudit(limit))

    # veil.mpc: the crypto providers (dealers) the node's owner approved
    @app.get("/api/v1/dealers")
    def dealers(s: Session = Depends(session)) -> Any:
        return {"items": run_json_op(s, "mpc.dealers.list")}

    @app.post("/api/v1/dealers")
    def add_dealer(body: DealerBody, s: Session = Depends(session)) -> Any:
        return run_json_op(s, "mpc.dealers.add", body.name, body.key, body.url)

    @app.delete("/api/v1/dealers/{name}")
    def remove_dealer(name: str, s: Session = Depends(session)) -> Any:
        return run_json_op(s, "mpc.dealers.remove", name)

    # veil.transfer: objects moved node to node (ptr.move), and the destinations approved.
    # The capability's state does the work (the server imports no capability).
    def transfers() -> Any:
        return node.capability_state("transfer")

    @app.post("/api/v1/transfer/push")
    def transfer_push(body: PushBody, s: Session = Depends(session)) -> Any:
        try:  # the delivery runs here, in a worker thread, outside the node's lock
            info = transfers().push(s, body.id, body.destination, body.ticket,
                                    requires_grad=body.requires_grad)  # fmt: skip
        except VeilError as exc:
            return _json(ErrorReply(exc.code, str(exc)))
        return msgspec.to_builtins(info)

    @app.post("/api/v1/transfer/check")
    async def transfer_check(x_veil_ticket: str = Header(default="", max_length=200)) -> Any:
        if not transfers().knows(x_veil_ticket):
            return _json(ErrorReply("permission_denied", f"node {node.name!r} has no valid "
                                    "move ticket like this one; ask for a new one"))  # fmt: skip
        return {"ok": True}

    @app.post("/api/v1/transfer/receive")
    async def transfer_receive(request: HTTPRequest,
                               x_veil_ticket: str = Header(default="", max_length=200)) -> Any:  # fmt: skip
        st = transfers()
        slots = st.receiving()
        if not slots.acquire(blocking=False):
            return _json(ErrorReply("invalid_request", f"node {node.name!r} is storing as "
                                    "many deliveries as it takes at once; retry"))  # fmt: skip
        try:
            try:  # the ticket is used up before the body is read: one ticket, one body
                s = st.claim(x_veil_ticket)
            except VeilError as exc:
                return _json(ErrorReply(exc.code, str(exc)))
            frame = await request.body()  # at most the node's frame limit (BodyLimit)
            try:
                info = await run_in_threadpool(st.accept, s, frame)
            except VeilError as exc:
                return _json(ErrorReply(exc.code, str(exc)))
            return msgspec.to_builtins(info)
        finally:
            slots.release()

    @app.get("/api/v1/peers")
    def peers(s: Session = Depends(session)) -> Any:
        return run_method(s, "transfer", "peers.list", {})

    @app.post("/api/v1/peers")
    def add_peer(body: PeerBody, s: Session = Depends(session)) -> Any:
        return run_method(s, "transfer", "peers.add", {"name": body.name, "url": body.url})

    @app.delete("/api/v1/peers/{name}")
    def remove_peer(name: str, s: Session = Depends(session)) -> Any:
        return run_method(s, "transfer", "peers.remove", {"name": name})

    # veil.plans: the plans scientists asked to run on private data, for review
    def run_method(s: Session, cap: str, method: str, body: Any) -> Any:
        reply = node.handle(s, Call(CapabilityCall(cap, method, msgspec.msgpack.encode(body))))
        if not isinstance(reply, CapabilityReply):
            return _json(reply)  # an error: raised as its HTTP status
        return msgspec.msgpack.decode(reply.body)

    @app.get("/api/v1/plans")
    def plans(status: str | None = Query(default=None), s: Session = Depends(session)) -> Any:
        return run_method(s, "plans", "list", ListPlans(status))

    @app.get("/api/v1/plans/{request_id}")
    def plan(request_id: int, s: Session = Depends(session)) -> Any:
        return run_method(s, "plans", "show", ShowPlan(request_id))

    @app.post("/api/v1/plans/{request_id}/approve")
    def approve_plan(
        request_id: int, body: DecisionBody | None = None, s: Session = Depends(session)
    ) -> Any:
        return run(s, DecideRequest(request_id, True, body.note if body else ""))

    @app.post("/api/v1/plans/{request_id}/deny")
    def deny_plan(
        request_id: int, body: DecisionBody | None = None, s: Session = Depends(session)
    ) -> Any:
        return run(s, DecideRequest(request_id, False, body.note if body else ""))

    # veil.models: models the node hosts; devices fetch them here (veil.device.fetch) with
    # the standard library alone, and predict locally. Every fetch is audited.
    def call_models(s: Session, method: str, request: msgspec.Struct, reply: type[Any]) -> Any:
        body = msgspec.msgpack.encode(request)
        got = node.handle(s, Call(CapabilityCall("models", method, body)))
        if not isinstance(got, CapabilityReply):
            return _json(got)  # an error: raised as its HTTP status
        return msgspec.msgpack.decode(got.body, type=reply)

    @app.get("/api/v1/models")
    def models(name: str | None = Query(default=None, max_length=128),
               s: Session = Depends(session)) -> Any:  # fmt: skip
        """Every hosted model version (of ``name`` only, if given): facts, never bytes."""
        return msgspec.to_builtins(call_models(s, "list", ListModels(name), ModelList))

    def model_bytes(s: Session, name: str, version: str | None) -> Response:
        got: ModelData = call_models(s, "fetch", FetchModel(name, version), ModelData)
        info = got.info
        return Response(got.data, media_type="application/octet-stream", headers={
            "X-Veil-SHA256": info.sha256, "X-Veil-Model-Name": info.name,
            "X-Veil-Model-Version": info.version, "ETag": f'"{info.sha256}"',
            "Content-Disposition": f'attachment; filename="{info.name}-{info.version}.onnx"',
        })  # fmt: skip

    @app.get("/api/v1/models/{name}")
    def model_latest(name: str, s: Session = Depends(session)) -> Response:
        """The ONNX bytes of the latest version; ``X-Veil-SHA256`` states their hash."""
        return model_bytes(s, name, None)

    @app.get("/api/v1/models/{name}/{version}")
    def model_version(name: str, version: str, s: Session = Depends(session)) -> Response:
        """The ONNX bytes of one version; ``X-Veil-SHA256`` states their hash."""
        return model_bytes(s, name, version)

    @app.websocket("/api/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise AuthenticationError("missing bearer token")
            s = node.session_for_token(token)
        except AuthenticationError as exc:
            await websocket.close(code=4401, reason=str(exc)[:120])
            return
        await websocket.accept()
        assembler = Assembler(node.max_message_bytes)
        try:
            while True:
                message = await websocket.receive_bytes()
                try:
                    frame = assembler.feed(message)
                except VeilError as exc:  # broken framing: answer, then drop this connection
                    await websocket.send_bytes(
                        b"\x00" + codec.encode(ErrorReply(exc.code, str(exc)))
                    )
                    await websocket.close(code=1008)
                    return
                if frame is None:
                    continue
                try:  # every message: the token may have expired or been revoked since
                    s = node.session_for_token(token)
                except AuthenticationError as exc:
                    await websocket.send_bytes(
                        b"\x00" + codec.encode(ErrorReply(exc.code, str(exc)))
                    )
                    await websocket.close(code=4401)
                    return
                if len(frame) > INLINE_LIMIT:
                    reply = await run_in_threadpool(node.handle_frame, s, frame)
                else:  # inline, unless the node is busy: then wait in a worker thread
                    inline = node.try_handle_frame(s, frame)
                    if inline is None:
                        inline = await run_in_threadpool(node.handle_frame, s, frame)
                    reply = inline
                del frame
                for part in split_frame(reply, chunk_bytes):
                    await websocket.send_bytes(part)  # type: ignore[arg-type]
        except WebSocketDisconnect:
            return
        except KeyError:  # a text message where bytes were expected
            await websocket.close(code=1003)

    return app
