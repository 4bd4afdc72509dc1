"""Differential test: the Lua cart scripts against the reference implementation :mod:`protocol.cart`.

Random histories of ops from several clients (with fresh, stale and arbitrary causal contexts, ties on HLC,
client ids that sort differently by bytes and by locale, attrs, out-of-range quantities, and replays) are fed
to both; after every op the outcome (ok/code, result, conflict, the event's changed lines) and the whole
stored cart (lines with their dots in order, the attrs each dot and each base carries, and the fold counter)
must be identical.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol import cart, frames
from syncd.store import OpOutcome, RedisStore
from tests.profiles import examples

SKUS = ("tea", "cake", "Milk")
CLIENTS = ("A", "a", "b")  # "A" < "a" < "b" by bytes; a locale-aware order would differ
_example = itertools.count()


@dataclasses.dataclass(frozen=True)
class Action:
    """One step of a history: an op of client ``who``, or a replay of one of its earlier ops."""

    who: int
    kind: str
    sku: int = 0
    qty: int = 1
    hlc: int = 0
    ctx: str = "fresh"  # fresh: what the client sees now; stale: its last sync; random; none
    random_ctx: dict[str, int] = dataclasses.field(default_factory=dict)
    attrs: dict[str, Any] | None = None
    sync: bool = False
    replay: int = 0  # for kind "replay": how many of its ops back


attrs = st.none() | st.dictionaries(
    st.sampled_from(["size", "gift", "note"]),
    st.sampled_from(["L", "S", ""]) | st.integers(-3, 3) | st.booleans(),
    max_size=3,
)
random_ctxs = st.dictionaries(st.sampled_from([*CLIENTS, "~"]), st.integers(0, 30), max_size=4)


def actions(kinds: st.SearchStrategy[str], skus: int) -> st.SearchStrategy[Action]:
    return st.builds(
        Action,
        who=st.integers(0, len(CLIENTS) - 1),
        kind=kinds,
        sku=st.integers(0, skus - 1),
        qty=st.sampled_from([1, 1, 2, 2, 3, 5, 999, 9999, 0, 1000, 10000]),  # mostly valid, all bounds
        hlc=st.integers(0, 4),
        ctx=st.sampled_from(["fresh", "fresh", "stale", "random", "none"]),
        random_ctx=random_ctxs,
        attrs=attrs,
        sync=st.booleans(),
        replay=st.integers(1, 4),
    )


mixed = st.lists(
    actions(
        st.sampled_from(["cart.add"] * 4 + ["cart.set"] * 3 + ["cart.remove"] * 2 + ["cart.clear", "replay"]),
        3,
    ),
    min_size=8,
    max_size=40,
)
fold_heavy = st.lists(
    actions(st.sampled_from(["cart.add"] * 16 + ["cart.set", "cart.remove", "replay"]), 1),
    min_size=20,
    max_size=60,
)


@dataclasses.dataclass
class Client:
    client_id: str
    view: cart.Cart = dataclasses.field(default_factory=cart.empty_cart)
    """The cart as this client last synced it: stale contexts come from here."""
    sent: list[tuple[frames.Op, OpOutcome]] = dataclasses.field(default_factory=list)


def expected(ref: cart.Cart, client_id: str, op: frames.Op) -> cart.Outcome:
    try:
        parsed = cart.parse_op(op.kind, op.args, client_id=client_id, seq=op.seq, hlc=op.hlc, ctx=op.ctx)
    except cart.CartArgsError:
        return cart.Outcome(cart=ref, changed={}, conflict=None, result=None, rejected="bad_args")
    return cart.apply(ref, parsed)


def context(action: Action, client: Client, ref: cart.Cart, sku: str) -> dict[str, int] | None:
    if action.ctx == "none":
        return None
    if action.ctx == "random":
        return action.random_ctx
    seen = ref if action.ctx == "fresh" else client.view
    if action.kind == "cart.clear":
        return cart.cart_vv(seen)
    line = seen["lines"].get(sku)
    return cart.line_vv(line) if line is not None else {}


async def run_history(store: RedisStore, history: list[Action]) -> None:
    n = next(_example)
    member = f"dm{n}"
    clients = [Client(f"{name}{n}") for name in CLIENTS]
    ref = cart.empty_cart()
    for action in history:
        client = clients[action.who]
        if action.kind == "replay":
            if not client.sent:
                continue
            op, original = client.sent[-min(action.replay, len(client.sent))]
            event("replay")
            again = await store.apply_op(client.client_id, op)
            assert again.dup and again.event is None
            assert (again.ok, again.code, again.result, again.conflict) == (
                original.ok,
                original.code,
                original.result,
                original.conflict,
            )
            continue
        if action.sync:
            client.view = ref
        sku = SKUS[action.sku]
        args: dict[str, Any] = {"member": member}
        if action.kind != "cart.clear":
            args["sku"] = sku
        if action.kind in ("cart.add", "cart.set"):
            args["qty"] = action.qty
            if action.attrs is not None:
                args["attrs"] = action.attrs
        op = frames.Op(
            seq=len(client.sent) + 1,
            kind=action.kind,
            args=args,
            ctx=context(action, client, ref, sku),
            hlc=action.hlc,
        )
        want = expected(ref, client.client_id, op)
        got = await store.apply_op(client.client_id, op)
        client.sent.append((op, got))
        assert not got.dup
        assert (got.ok, got.code) == (want.rejected is None, want.rejected), (op, got, want)
        assert got.result == want.result, op
        assert got.conflict == want.conflict, op
        event(f"{op.kind}: {'ok' if got.ok else got.code}")
        if got.conflict:
            event("conflict")
        if want.cart["folds"] > ref["folds"]:
            event("fold")
            if any(len(line["dots"][0]) > 5 for line in want.cart["lines"].values()):
                event("fold: a base carries attrs")
        if got.ok:
            assert got.event is not None and got.event.data == want.event_data(), op
            assert got.event.conflict == want.conflict
            ref = want.cart
        else:
            assert got.event is None
        assert await store.load_cart(member) == ref, op
        kept = await store._client.hget(f"{{m:{member}}}:top:cart", "state_bytes")
        assert int(kept or 0) == cart.cart_bytes(ref), "the size the hub keeps is the reference's measure"


SETTINGS = settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(history=mixed)
async def test_lua_scripts_match_the_reference_on_random_histories(
    store: RedisStore, history: list[Action]
) -> None:
    await run_history(store, history)


@SETTINGS
@given(history=fold_heavy)
async def test_lua_scripts_match_the_reference_when_lines_fold(
    store: RedisStore, history: list[Action]
) -> None:
    await run_history(store, history)
