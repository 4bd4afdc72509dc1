"""Properties of the engine, by hypothesis, against the sans-I/O fake hub (reference cart rules).

* Convergence: random schedules of a few devices making cart ops, going offline, crashing mid-flight (losing
  what they had not persisted), receiving duplicate events and ``rate_limited`` refusals, all end with the
  same cart as the hub, an empty outbox, and every op applied exactly once.
* Prediction: the view's merging of our own adds is exact — the same quantity, vector, winner and attrs as
  the reference rules applied without merging.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.engine import _Pending, predict_line
from protocol import cart as rules
from protocol.errors import ErrorCode
from tests.clients.fakes import T0, Device, FakeHub, Fault
from tests.profiles import examples

SKUS = ["A", "B", "C"]
CLIENTS = ["app-1", "pos-1", "pos-2"]

op_strategy = st.one_of(
    st.tuples(st.just("cart.add"), st.sampled_from(SKUS), st.integers(1, 3)),
    st.tuples(st.just("cart.set"), st.sampled_from(SKUS), st.integers(0, 5)),
    st.tuples(st.just("cart.remove"), st.sampled_from(SKUS), st.just(0)),
    st.tuples(st.just("cart.clear"), st.just(""), st.just(0)),
)
action = st.one_of(
    st.tuples(st.just("op"), st.integers(0, 2), op_strategy),
    st.tuples(
        st.sampled_from(["pump", "disconnect", "connect", "crash", "dup_events", "rate_limit"]),
        st.integers(0, 2),
        st.none(),
    ),
)


def make(device: Device, spec: tuple[str, str, int], now: int) -> None:
    kind, sku, qty = spec
    args: dict[str, Any] = {"member": "m1"}
    if kind != "cart.clear":
        args["sku"] = sku
    if kind in ("cart.add", "cart.set"):
        args["qty"] = qty
    device.op(kind, now=now, **args)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, max_size=40), st.integers(1, 3))
def test_random_schedules_converge_to_the_hubs_cart_with_every_op_applied_once(
    actions: list[tuple[str, int, Any]], n: int
) -> None:
    hub = FakeHub(max_batch=4)
    devices = [Device(CLIENTS[i], window=4) for i in range(n)]
    for d in devices:
        d.subscribe("m1")
        d.flush()
    made: set[tuple[str, int]] = set()
    now = T0
    for name, index, spec in actions:
        now += 7
        i = index % n
        d = devices[i]
        if name == "op":
            before = d.engine.next_seq
            make(d, spec, now)
            made.add((d.client_id, before))
        elif name == "pump":
            d.pump(now)
        elif name == "disconnect":
            d.disconnect()
        elif name == "connect" and d.session is None:
            d.connect(hub, now)
        elif name == "crash":
            # Mid-flight: frames reach the hub and its answers reach the engine, but nothing is persisted.
            if d.session is not None:
                for frame in d.engine.frames_to_send(now):
                    d.session.send(frame, now)
                for frame in d.session.take():
                    d.engine.receive(frame, now)
                d.handle_events()
            devices[i] = d.restart()
        elif name == "dup_events" and d.session is not None:
            d.session.duplicate_events = not d.session.duplicate_events
        elif name == "rate_limit":
            hub.faults.append(Fault(d.client_id, d.engine.next_seq - 1 or 1, ErrorCode.RATE_LIMITED, 50))
    # heal: everyone online until nothing moves
    for d in devices:
        if d.session is None:
            d.connect(hub, now)
    for _ in range(200):
        now += 100
        moved = [d.step(now) for d in devices]
        if not any(moved) and not any(d.engine.next_deadline() for d in devices):
            break
    for d in devices:
        d.pump(now + 1000)
    expected = hub.lines("m1")
    for d in devices:
        assert d.engine.pending == 0, d.client_id
        assert d.store.outbox == {}  # applied ops were kept only until the cached state showed them
        assert d.view("m1") == expected, d.client_id
    assert len(hub.applied) == len(set(hub.applied))  # never twice
    settled = {key for key in hub.outcomes}
    assert made <= settled  # never lost: every op made was settled (applied or rejected)


maybe_attrs = st.none() | st.just({}) | st.fixed_dictionaries({"k": st.integers(0, 2)})
line_ops = st.lists(
    st.one_of(
        st.tuples(st.just(rules.ADD), st.integers(1, 5), maybe_attrs),
        st.tuples(st.just(rules.SET), st.integers(0, 5), maybe_attrs),
        st.tuples(st.just(rules.REMOVE), st.just(0), st.none()),
        st.tuples(st.just(rules.CLEAR), st.just(0), st.none()),
    ),
    max_size=30,
)
server_dots = st.lists(
    st.tuples(
        st.sampled_from(["x", "y"]),
        st.sampled_from([rules.DOT_ADD, rules.DOT_SET]),
        st.integers(1, 4),
        st.integers(900, 1400),  # hlc: before, among and after ours (1000 + 10 * seq)
        maybe_attrs,
    ),
    max_size=6,
)


@settings(max_examples=examples(300), deadline=None)
@given(server_dots, line_ops)
def test_merging_our_adds_predicts_exactly_what_the_rules_give(
    base: list[tuple[str, str, int, int, dict[str, int] | None]],
    ops: list[tuple[str, int, dict[str, int] | None]],
) -> None:
    me = "me"
    line: rules.Line | None = None
    if base:
        dots: list[rules.Dot] = []
        for i, (c, k, v, hlc, attrs) in enumerate(base):
            dots.append([c, i + 1, k, v, hlc] + ([attrs] if attrs is not None else []))
        dots.sort(key=rules.dot_order)
        line = {"qty": rules._qty(dots), "vv": rules._vv(dots), "dots": dots}
        if rules.line_attrs(line):
            line["attrs"] = rules.line_attrs(line)
    merged = plain = line
    for seq, (kind, qty, attrs) in enumerate(ops, start=1):
        view = merged
        ctx = None if kind == rules.ADD else (dict(view["vv"]) if view is not None else {})
        hlc = 1000 + 10 * seq
        op = _Pending(
            seq,
            kind,
            None if kind == rules.CLEAR else "S",
            qty if kind in (rules.ADD, rules.SET) else None,
            hlc,
            ctx,
            attrs,
        )
        merged = predict_line(merged, "S", op, me)
        cart: rules.Cart = {"lines": {"S": plain} if plain is not None else {}, "folds": 0}
        cart_op = rules.CartOp(
            kind=kind,
            client_id=me,
            seq=seq,
            hlc=hlc,
            ctx=ctx or {},
            sku=None if kind == rules.CLEAR else "S",
            qty=op.qty,
            attrs=attrs,
        )
        plain = rules.predict(cart, cart_op).cart["lines"].get("S")
        assert (merged is None) == (plain is None)
        if merged is not None and plain is not None:
            assert merged["qty"] == plain["qty"]
            assert merged["vv"] == plain["vv"]
            assert merged.get("attrs") == plain.get("attrs")
            assert rules.line_attrs(merged) == rules.line_attrs(plain)
            assert rules.conflict_of("S", merged) == rules.conflict_of("S", plain)
            assert merged["dots"] == sorted(merged["dots"], key=rules.dot_order)
