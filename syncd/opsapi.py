"""``/ops/stock/…``: the operators' HTTP API over one SKU's stock (PROTOCOL.md §18.1).

A back-office tool or a script changes stock with plain HTTP and JSON instead of the websocket protocol. The
API is thin on purpose: each write becomes one stock op applied through the same store path as a websocket
op (:meth:`~syncd.store.redis_store.RedisStore.apply_op`), so the same scripts check the same rules, every
change is an event on ``stock:<sku>`` that subscribed devices see, and the durability mode holds for the
HTTP answer as for an ``ack``.

Who: a bearer token in ``Authorization``, verified like a ``hello``'s (signature, issuer, expiry, claim
types, revocation); only ``ops`` tokens pass. A missing or invalid token is 401, another role 403.

Exactly once: a websocket op is deduplicated by ``(client_id, seq)``. An HTTP write has neither, so each
gets a one-op client of its own: with an ``Idempotency-Key`` header, the client id is derived from the token's
subject, the method, the path and the key (``http.<hash>``) and its op is seq 1, so a retried request is that
op replayed and answered from the op dedup (``dup: true``, the first outcome, applied once); without one the
id is random and a retry is a new write. The same key with another body is refused (422), as it can only be
a mistake. The one-op client's watermark expires with its dedup records
(:meth:`~syncd.store.redis_store.RedisStore.retire_client`): a key is honoured for the dedup retention.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from protocol import frames
from protocol import stock as rules
from protocol.datatype import Key
from protocol.errors import BackendUnavailable, ErrorCode, ProtocolError
from protocol.topics import is_valid_key
from protocol.types.stock import Bound, Qty
from syncd.auth import AuthError, Principal, Role, principal_from_claims
from syncd.hub import Hub, scope_check
from syncd.types.stock import full_state

MAX_BODY_BYTES: Final = 4096
"""The largest request body accepted (413 beyond): every body here is a few small fields."""
IDEMPOTENCY_KEY: Final = re.compile(r"[\x21-\x7e]{1,128}")
"""An ``Idempotency-Key``: 1–128 printable ASCII characters, no spaces."""
RETRY_AFTER_S: Final = 1

_STATUS: Final[dict[str, int]] = {
    ErrorCode.BAD_ARGS: 400,
    ErrorCode.MALFORMED: 400,
    ErrorCode.UNKNOWN_OP: 400,
    ErrorCode.NOT_PERMITTED: 403,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
"""HTTP status of a refusal by its code; every other code is a business rule's rejection: 409."""


class _Body(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A request body: unknown fields are refused, so a typo never passes as a default."""


class QtyBody(_Body, frozen=True):
    qty: Qty


class BoundBody(_Body, frozen=True):
    qty: Bound


class AdjustBody(_Body, frozen=True):
    delta: Annotated[int, msgspec.Meta(ge=-rules.MAX_QTY, le=rules.MAX_QTY)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class StoreQtyBody(_Body, frozen=True):
    store: Key
    qty: Qty


class RecallBody(_Body, frozen=True):
    store: Key
    qty: Bound


class RebalanceBody(_Body, frozen=True):
    source: Key = msgspec.field(name="from")
    to: Key
    qty: Bound


def routes() -> list[BaseRoute]:
    return [
        Route("/ops/stock/{sku}", get_stock, methods=["GET"]),
        Route("/ops/stock/{sku}/restock", restock, methods=["POST"]),
        Route("/ops/stock/{sku}/adjust", adjust, methods=["POST"]),
        Route("/ops/stock/{sku}/quota/{channel}", quota, methods=["PUT"]),
        Route("/ops/stock/{sku}/limit", limit, methods=["PUT"]),
        Route("/ops/stock/{sku}/allot", allot, methods=["POST"]),
        Route("/ops/stock/{sku}/recall", recall, methods=["POST"]),
        Route("/ops/stock/{sku}/rebalance", rebalance, methods=["POST"]),
    ]


def refusal(
    code: str,
    message: str,
    status: int | None = None,
    *,
    retry: bool = False,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A typed JSON error, ``{"ok": false, "code", "message", …extra}``, with the protocol's code; ``retry``:
    the outcome is unknown or the hub not ready, so ``Retry-After`` says when to send the same request."""
    if status is None:
        status = _STATUS.get(code, 409)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    body = {"ok": False, "code": code, "message": message, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


def _caller(request: Request) -> tuple[Hub, Principal] | JSONResponse:
    """The hub and the request's ``ops`` principal, or the refusal to answer."""
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        return refusal(ErrorCode.UNAVAILABLE, "the hub is starting", retry=True)
    who = operator(request, hub)
    return who if isinstance(who, JSONResponse) else (hub, who)


def operator(request: Request, hub: Hub) -> Principal | JSONResponse:
    """The request's ``ops`` principal, or the 401/403 answer (codes as the websocket's: the close code's
    name for a token refused, ``not_permitted`` for another role)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return refusal("unauthorized", "an ops token is needed: Authorization: Bearer <token>", 401)
    try:
        principal = principal_from_claims(hub.verifier.claims(token.strip()))
    except AuthError as exc:
        return refusal(exc.close_code.name.lower(), exc.reason, 401)
    revocations = hub.verifier.revocations
    if revocations is not None and revocations.refuses(principal):
        return refusal("revoked", "client revoked by an operator", 401)
    if principal.role is not Role.OPS:
        return refusal(ErrorCode.NOT_PERMITTED, "the ops API takes an ops token", 403)
    return principal


async def _read_body(request: Request) -> bytes | None:
    """The body, or ``None`` when it is larger than :data:`MAX_BODY_BYTES` (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def client_for(principal: Principal, request: Request, key: str | None) -> str:
    """The one-op client id of a write: derived from who, what and the key when there is one, so the same
    request retried is the same op; random otherwise."""
    if key is None:
        return f"http.{uuid.uuid4().hex}"
    text = "\n".join((principal.client_id, request.method, request.url.path, key))
    return f"http.{hashlib.sha256(text.encode()).hexdigest()[:48]}"


async def get_stock(request: Request) -> Response:
    """``GET /ops/stock/{sku}``: the SKU's full state, read atomically."""
    caller = _caller(request)
    if isinstance(caller, JSONResponse):
        return caller
    hub, _ = caller
    sku = request.path_params["sku"]
    if not is_valid_key(sku):
        return refusal(ErrorCode.BAD_ARGS, "a SKU is 1-64 of [A-Za-z0-9._@-]")
    try:
        state = await full_state(hub.store.read, sku)
    except BackendUnavailable as exc:
        return refusal(ErrorCode.UNAVAILABLE, str(exc), retry=True)
    return JSONResponse(state)


async def write(
    request: Request, kind: str, body_type: type[_Body], args: Callable[[Any], dict[str, Any]]
) -> Response:
    """One HTTP write: authenticate, bound and type the body, apply it as op ``kind`` with ``args(body)``
    (besides ``member`` and ``sku``) exactly once, answer its outcome."""
    caller = _caller(request)
    if isinstance(caller, JSONResponse):
        return caller
    hub, who = caller
    key = request.headers.get("idempotency-key")
    if key is not None and IDEMPOTENCY_KEY.fullmatch(key) is None:
        return refusal(ErrorCode.BAD_ARGS, "Idempotency-Key: 1-128 printable ASCII characters, no spaces")
    raw = await _read_body(request)
    if raw is None:
        return refusal(ErrorCode.FRAME_TOO_LARGE, f"the body exceeds {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        return refusal(ErrorCode.BAD_ARGS, f"{kind}: {exc}")
    except msgspec.DecodeError as exc:
        return refusal(ErrorCode.MALFORMED, f"the body is not JSON: {exc}")
    member = who.client_id if is_valid_key(who.client_id) else "ops"
    op_args = {"member": member, "sku": request.path_params["sku"], **args(body)}
    client_id = client_for(who, request, key)
    op = frames.Op(seq=1, kind=kind, args=op_args)
    if key is not None:
        fingerprint = hashlib.sha256(msgspec.json.encode([kind, op_args])).hexdigest()
        try:
            same = await hub.store.claim_request(client_id, fingerprint)
        except BackendUnavailable as exc:
            return refusal(ErrorCode.UNAVAILABLE, str(exc), retry=True)
        if not same:
            return refusal(ErrorCode.BAD_ARGS, "this Idempotency-Key was used for another request", 422)
    return await apply(hub, who, client_id, op)


async def apply(hub: Hub, who: Principal, client_id: str, op: frames.Op) -> Response:
    """Apply ``op`` as the one op of ``client_id`` and answer its outcome as JSON."""
    try:
        marks = await hub.feed.mark(client_id, [op])  # the stores it may change (syncd/storefeed.py)
        outcome = await hub.store.apply_op(client_id, op, check=scope_check(who))
        await hub.feed.forward(client_id, marks, [op.seq])
        await hub.store.retire_client(client_id)
    except BackendUnavailable as exc:  # the outcome is unknown: retry with the same Idempotency-Key
        return refusal(ErrorCode.UNAVAILABLE, str(exc), retry=True)
    except ProtocolError as exc:  # no gap can happen at seq 1: a hub fault if it does
        return refusal(ErrorCode.INTERNAL, exc.message)
    if not outcome.ok:
        return refusal(outcome.code or ErrorCode.INTERNAL, outcome.message, extra={"dup": outcome.dup})
    event = outcome.event
    return JSONResponse(
        {
            "ok": True,
            "dup": outcome.dup,
            "result": outcome.result,
            "stock": None if event is None else event.data,
        }
    )


async def restock(request: Request) -> Response:
    """``POST /ops/stock/{sku}/restock`` ``{"qty"}``."""
    return await write(request, rules.RESTOCK, QtyBody, lambda b: {"qty": b.qty})


async def adjust(request: Request) -> Response:
    """``POST /ops/stock/{sku}/adjust`` ``{"delta", "reason"}``: a stock take's correction."""
    return await write(request, rules.ADJUST, AdjustBody, lambda b: {"delta": b.delta, "reason": b.reason})


async def quota(request: Request) -> Response:
    """``PUT /ops/stock/{sku}/quota/{channel}`` ``{"qty"}``."""
    channel = request.path_params["channel"]
    return await write(request, rules.QUOTA, BoundBody, lambda b: {"channel": channel, "qty": b.qty})


async def limit(request: Request) -> Response:
    """``PUT /ops/stock/{sku}/limit`` ``{"qty"}`` (0: no purchase limit)."""
    return await write(request, rules.LIMIT, BoundBody, lambda b: {"qty": b.qty})


async def allot(request: Request) -> Response:
    """``POST /ops/stock/{sku}/allot`` ``{"store", "qty"}``."""
    return await write(request, rules.ALLOT, StoreQtyBody, lambda b: {"store": b.store, "qty": b.qty})


async def recall(request: Request) -> Response:
    """``POST /ops/stock/{sku}/recall`` ``{"store", "qty"}``: ask the store to give ``qty`` back to the pool
    (0 withdraws). A recall, not a move: the store's till yields the units when it is online."""
    return await write(request, rules.RECALL, RecallBody, lambda b: {"store": b.store, "qty": b.qty})


async def rebalance(request: Request) -> Response:
    """``POST /ops/stock/{sku}/rebalance`` ``{"from", "to", "qty"}``: ask store ``from`` to give ``qty`` to
    store ``to``; the units move when ``from``'s till yields them."""
    return await write(
        request, rules.RECALL, RebalanceBody, lambda b: {"store": b.source, "qty": b.qty, "to": b.to}
    )
