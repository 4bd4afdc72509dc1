"""The cart rules (docs/cart-rules.md): one test per rule, then properties over random concurrent histories.

The properties drive a small simulation of the real system: a hub applies ops one at a time (the "hub
order"); each client sees a gap-free prefix of that history plus its own pending ops, and derives each op's
``ctx`` from what it saw, as the SDK does. Then the same ops are applied in other orders that keep each
client's seq order and causal order (an op after every dot its ``ctx`` covers) - every such order for short
histories, random ones for longer - and the full states compared: quantities, attrs, vectors, the dots and
their order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cart as cart_rules
from protocol import topics
from protocol.cart import (
    ADD,
    CLEAR,
    MAX_CART_BYTES,
    MAX_DOTS,
    MAX_LINE_BYTES,
    MAX_LINES,
    REMOVE,
    SET,
    Cart,
    CartArgsError,
    CartOp,
    Line,
    apply,
    cart_bytes,
    cart_vv,
    check_op,
    conflict_of,
    dot_order,
    empty_cart,
    line_attrs,
    line_bytes,
    line_qty,
    line_vv,
    parse_op,
    predict,
    snapshot,
    wire_line,
)
from tests.profiles import examples
from tests.protocol.helpers import long_attrs

# --- helpers -------------------------------------------------------------------------------------------


def op(
    kind: str,
    client: str,
    seq: int,
    sku: str | None = "x",
    qty: int | None = None,
    *,
    hlc: int = 0,
    ctx: dict[str, int] | None = None,
    attrs: dict[str, Any] | None = None,
) -> CartOp:
    return CartOp(kind, client, seq, hlc, ctx or {}, sku, qty, attrs)


def add(client: str, seq: int, qty: int, sku: str = "x", **kw: Any) -> CartOp:
    return op(ADD, client, seq, sku, qty, **kw)


def set_(client: str, seq: int, qty: int, sku: str = "x", **kw: Any) -> CartOp:
    return op(SET, client, seq, sku, qty, **kw)


def remove(client: str, seq: int, sku: str = "x", **kw: Any) -> CartOp:
    return op(REMOVE, client, seq, sku, **kw)


def clear(client: str, seq: int, **kw: Any) -> CartOp:
    return op(CLEAR, client, seq, None, **kw)


def check_invariants(cart: Cart, max_dots: int = MAX_DOTS) -> None:
    """What every stored cart satisfies, whatever happened to it."""
    for sku, line in cart["lines"].items():
        dots = line["dots"]
        assert dots, f"{sku}: a line without dots must not exist"
        assert line["qty"] == line_qty(line)
        assert line["vv"] == line_vv(line)
        assert line["qty"] >= 0
        nonbase = [d for d in dots if d[2] != "b"]
        bases = [d for d in dots if d[2] == "b"]
        assert len(nonbase) <= max_dots
        assert len(bases) <= 1
        if bases:
            assert dots[0] is bases[0], "the base dot is kept first"
            assert bases[0][0] == "~"
            assert bases[0][4] == 0
            assert 1 <= bases[0][1] <= cart["folds"]
        assert len(line["vv"]) <= max_dots + 1
        assert len({(d[0], d[1]) for d in dots}) == len(dots), "dots are unique"
        assert dots == sorted(dots, key=dot_order), "dots are in canonical order"
        assert set(line) <= {"qty", "attrs", "vv", "dots"}
        assert line.get("attrs", {}) == line_attrs(line)
        assert line.get("attrs", True), "empty attrs are omitted"
        for d in dots:
            if d[2] == "b":
                assert len(d) in (5, 7), "a base carries attrs with their key, or neither"
            else:
                assert len(d) in (5, 6)
            assert len(d) == 5 or isinstance(d[5], dict)
        assert line == wire_line(line), "stored and sent alike"


def run(ops: list[CartOp], cart: Cart | None = None) -> Cart:
    """Apply ops in order, each of which must be accepted."""
    cart = cart if cart is not None else empty_cart()
    for o in ops:
        out = apply(cart, o)
        assert out.rejected is None, (o, out.rejected)
        check_invariants(out.cart)
        cart = out.cart
    return cart


def qty(cart: Cart, sku: str = "x") -> int:
    line = cart["lines"].get(sku)
    return 0 if line is None else line["qty"]


# --- the rules, one by one -----------------------------------------------------------------------------


def test_add_creates_a_line_in_wire_shape() -> None:
    out = apply(empty_cart(), add("a", 1, 2, hlc=10))
    assert out.rejected is None
    assert out.result == {"qty": 2}
    assert out.conflict is None
    line = out.cart["lines"]["x"]
    assert line == {"qty": 2, "vv": {"a": 1}, "dots": [["a", 1, "a", 2, 10]]}
    assert out.changed == {"x": line}
    assert out.event_data() == {"lines": {"x": line}}
    assert out.cart["folds"] == 0


def test_concurrent_adds_sum() -> None:
    # Two devices saw the line at qty 0 and add 2 and 1: 3, never "last one wins".
    cart = run([add("a", 1, 2), add("b", 1, 1)])
    assert qty(cart) == 3
    cart = run([add("b", 1, 1), add("a", 1, 2)])
    assert qty(cart) == 3


def test_add_removes_nothing_even_what_it_saw() -> None:
    # An add commutes with everything: the device that saw qty 2 and adds 1 means 3, whatever its ctx says.
    cart = run([add("a", 1, 2)])
    out = apply(cart, add("b", 1, 1, ctx=line_vv(cart["lines"]["x"])))
    assert out.result == {"qty": 3}
    assert out.cart["lines"]["x"]["dots"] == [["a", 1, "a", 2, 0], ["b", 1, "a", 1, 0]]


def test_remove_only_removes_what_it_saw() -> None:
    # b saw qty 2 (a's add) and removes it, racing a's unseen add(1): the line keeps 1.
    cart = run([add("a", 1, 2)])
    seen = line_vv(cart["lines"]["x"])
    out = apply(run([add("a", 2, 1)], cart), remove("b", 1, ctx=seen))
    assert out.result == {"qty": 1}
    assert out.cart["lines"]["x"]["dots"] == [["a", 2, "a", 1, 0]]
    assert out.changed == {"x": wire_line(out.cart["lines"]["x"])}
    # The same ops in the other order (the add reaches the hub after the remove): same line.
    other = run([remove("b", 1, ctx=seen), add("a", 2, 1)], cart)
    assert other["lines"]["x"]["dots"] == out.cart["lines"]["x"]["dots"]


def test_remove_that_saw_everything_deletes_the_line() -> None:
    cart = run([add("a", 1, 2), add("b", 1, 3)])
    out = apply(cart, remove("c", 1, ctx=cart_vv(cart)))
    assert out.cart["lines"] == {}
    assert out.changed == {"x": None}
    assert out.event_data() == {"lines": {"x": None}}
    assert out.result == {"qty": 0}


def test_add_wins_over_concurrent_remove_and_set_zero() -> None:
    base = run([add("a", 1, 1)])
    seen = line_vv(base["lines"]["x"])
    for killer in (remove("b", 1, ctx=seen), set_("b", 1, 0, ctx=seen)):
        assert qty(run([add("c", 1, 5), killer], base)) == 5
        assert qty(run([killer, add("c", 1, 5)], base)) == 5


def test_set_replaces_what_it_saw() -> None:
    cart = run([add("a", 1, 2), add("b", 1, 3)])
    out = apply(cart, set_("c", 1, 7, hlc=5, ctx=line_vv(cart["lines"]["x"])))
    assert out.result == {"qty": 7}
    assert out.cart["lines"]["x"]["dots"] == [["c", 1, "s", 7, 5]]
    assert out.conflict is None


def test_set_plus_concurrent_add() -> None:
    # The set saw a:2; b's add(1) is concurrent: the set's value plus the unseen add.
    cart = run([add("a", 1, 2)])
    seen = line_vv(cart["lines"]["x"])
    assert qty(run([add("b", 1, 1), set_("c", 1, 5, ctx=seen)], cart)) == 6
    assert qty(run([set_("c", 1, 5, ctx=seen), add("b", 1, 1)], cart)) == 6


def test_concurrent_sets_pick_a_deterministic_winner_and_report_the_losers() -> None:
    cart = run([add("a", 1, 1)])
    seen = line_vv(cart["lines"]["x"])
    s_b = set_("b", 1, 4, hlc=200, ctx=seen)
    s_c = set_("c", 1, 9, hlc=100, ctx=seen)
    for order in ([s_b, s_c], [s_c, s_b]):
        mid = run(order[:1], cart)
        out = apply(mid, order[1])
        assert out.result == {"qty": 4}  # greatest hlc wins, whatever arrived last
        assert out.conflict == {"sku": "x", "winner": ["b", 1, 4], "losers": [["c", 1, 9]]}
    # A later set that saw only the winner removes it: the loser is next, as if the winner never was.
    both = run([s_b, s_c], cart)
    out = apply(both, remove("d", 1, ctx={"b": 1}))
    assert out.result == {"qty": 9}
    assert out.conflict is None


def test_winner_ties_break_on_client_id_bytes_then_seq() -> None:
    # Same hlc: the greater client_id as UTF-8 bytes wins ("b" > "B" > "A"; bytes, not case-folded).
    cart = run([set_("A", 1, 1, hlc=7), set_("b", 1, 2, hlc=7), set_("B", 1, 3, hlc=7)])
    conflict = conflict_of("x", cart["lines"]["x"])
    assert conflict == {"sku": "x", "winner": ["b", 1, 2], "losers": [["B", 1, 3], ["A", 1, 1]]}
    assert qty(cart) == 2
    # Same hlc and client (a client that did not put its own earlier set in ctx): greater seq wins.
    cart = run([set_("a", 1, 5, hlc=7), set_("a", 2, 6, hlc=7)])
    assert qty(cart) == 6


def test_conflict_is_reported_by_every_op_that_keeps_it() -> None:
    cart = run([set_("a", 1, 2, hlc=1), set_("b", 1, 3, hlc=2)])
    expected = {"sku": "x", "winner": ["b", 1, 3], "losers": [["a", 1, 2]]}
    assert apply(cart, add("c", 1, 1)).conflict == expected
    noop = apply(cart, remove("c", 1, ctx={"zz": 1}))  # removes nothing: changes nothing, still reports
    assert noop.changed == {}
    assert noop.cart is cart
    assert noop.result == {"qty": 3}
    assert noop.conflict == expected
    assert apply(cart, add("c", 1, 1, sku="y")).conflict is None  # another line


def test_set_zero_on_an_absent_line_changes_nothing() -> None:
    out = apply(empty_cart(), set_("a", 1, 0))
    assert (out.rejected, out.changed, out.conflict, out.result) == (None, {}, None, {"qty": 0})
    assert out.cart == empty_cart()
    out = apply(empty_cart(), remove("a", 1, ctx={"a": 9}))
    assert (out.changed, out.result) == ({}, {"qty": 0})


def test_set_zero_is_a_remove() -> None:
    cart = run([add("a", 1, 2), add("b", 1, 3)])
    out = apply(cart, set_("c", 1, 0, ctx={"a": 1}))
    assert out.cart["lines"]["x"]["dots"] == [["b", 1, "a", 3, 0]]
    assert out.result == {"qty": 3}


def test_clear_removes_observed_lines_only() -> None:
    cart = run([add("a", 1, 1, sku="x"), add("a", 2, 2, sku="y"), add("b", 1, 3, sku="z")])
    seen = cart_vv(cart)
    assert seen == {"a": 2, "b": 1}
    # Concurrently with the clear: an add to y (unseen) and a new line w.
    later = run([add("c", 1, 4, sku="y"), add("c", 2, 5, sku="w")], cart)
    out = apply(later, clear("d", 1, ctx=seen))
    assert set(out.cart["lines"]) == {"y", "w"}
    assert qty(out.cart, "y") == 4
    assert qty(out.cart, "w") == 5
    assert out.changed == {"x": None, "y": wire_line(out.cart["lines"]["y"]), "z": None}
    assert out.result == {"lines": 2}
    assert out.conflict is None
    assert out.cart["lines"]["w"] is later["lines"]["w"]  # untouched lines are shared, not copied


def test_clear_with_an_empty_context_removes_nothing() -> None:
    cart = run([add("a", 1, 1)])
    out = apply(cart, clear("b", 1))
    assert (out.changed, out.result, out.cart["lines"]) == ({}, {"lines": 1}, cart["lines"])


def test_clear_reports_the_first_conflict_in_sku_byte_order() -> None:
    cart = run(
        [
            set_("a", 1, 1, sku="b1", hlc=1),
            set_("b", 1, 2, sku="b1", hlc=2),
            set_("a", 2, 1, sku="B2", hlc=1),
            set_("b", 2, 2, sku="B2", hlc=2),
            add("c", 1, 1, sku="a"),
        ]
    )
    out = apply(cart, clear("d", 1, ctx={"c": 1}))
    assert set(out.cart["lines"]) == {"b1", "B2"}
    assert out.conflict is not None
    assert out.conflict["sku"] == "B2"  # "B" (0x42) sorts before "b" (0x62)


def test_line_limit() -> None:
    cart = run([add("a", i + 1, 1, sku=f"s{i}") for i in range(MAX_LINES)])
    assert len(cart["lines"]) == MAX_LINES
    out = apply(cart, add("a", 1000, 1, sku="one-too-many"))
    assert out.rejected == "limit_exceeded"
    assert (out.cart, out.changed, out.result, out.conflict) == (cart, {}, None, None)
    assert apply(cart, set_("a", 1000, 3, sku="one-too-many")).rejected == "limit_exceeded"
    # Ops that do not create a line still work at the limit.
    assert apply(cart, add("a", 1000, 1, sku="s0")).result == {"qty": 2}
    assert apply(cart, set_("a", 1000, 0, sku="one-too-many")).result == {"qty": 0}
    assert apply(cart, remove("a", 1000, sku="one-too-many")).result == {"qty": 0}
    freed = run([remove("a", 1000, sku="s0", ctx={"a": 1})], cart)
    assert apply(freed, add("a", 1001, 1, sku="one-too-many")).rejected is None


def test_a_line_is_bounded_in_encoded_bytes() -> None:
    # Every dot that carries attrs keeps its own copy (a removed winner shows the next one's), so a line of
    # adds with long attrs grows by a copy per add; past MAX_LINE_BYTES the op is rejected, changing nothing.
    cart, seq = empty_cart(), 0
    while True:
        seq += 1
        out = apply(cart, add("a", seq, 1, hlc=seq, attrs=long_attrs(f"a{seq}")))
        if out.rejected is not None:
            break
        check_invariants(out.cart)
        cart = out.cart
        assert line_bytes(cart["lines"]["x"]) <= MAX_LINE_BYTES
    assert out.rejected == "too_large"
    assert (out.cart, out.changed, out.result, out.conflict) == (cart, {}, None, None)
    assert 10 <= seq <= 13  # about 5.3 KiB per copy, plus the line's own
    # What does not grow the line is still accepted: an add without attrs, a set over what was seen, removes.
    assert apply(cart, add("b", 1, 1)).rejected is None
    assert apply(cart, set_("b", 1, 3, ctx=line_vv(cart["lines"]["x"]))).rejected is None
    assert apply(cart, remove("b", 1, ctx={"a": 2})).rejected is None
    assert apply(cart, clear("b", 1, ctx={"a": seq})).rejected is None
    # The bound is the hub's alone: a prediction never refuses what the hub may accept after folding.
    assert predict(cart, add("a", seq, 1, hlc=seq, attrs=long_attrs("p"))).rejected is None


def test_one_op_with_the_largest_attrs_fits_an_empty_line() -> None:
    widest = {chr(0x10000 + k) * 64: chr(0x10400) * 256 for k in range(16)}  # 4-byte characters
    out = apply(empty_cart(), add("a", 1, 1, attrs=widest))
    assert out.rejected is None
    assert MAX_LINE_BYTES // 2 < line_bytes(out.cart["lines"]["x"]) <= MAX_LINE_BYTES


def test_a_cart_is_bounded_in_encoded_bytes() -> None:
    # The poison cart: 24 skus, 17 adds each with 16 long attrs. The cart stops growing at MAX_CART_BYTES.
    cart, seq, codes = empty_cart(), 0, []
    for sku in range(24):
        for _ in range(17):
            seq += 1
            out = apply(cart, add("a", seq, 1, sku=f"S{sku}", hlc=seq, attrs=long_attrs(f"{seq}")))
            codes.append(out.rejected)
            cart = out.cart
    assert cart_bytes(cart) <= MAX_CART_BYTES
    assert cart_bytes(cart) > MAX_CART_BYTES - MAX_LINE_BYTES
    assert {None, "too_large"} == set(codes)
    lines = len(cart["lines"])
    assert 16 <= lines < 24
    # A new line, even a small one, would pass the bound: refused; shrinking ops are not.
    assert apply(cart, add("a", seq + 1, 1, sku="small", attrs=long_attrs("s"))).rejected == "too_large"
    first = cart["lines"]["S0"]
    assert apply(cart, remove("a", seq + 1, sku="S0", ctx=line_vv(first))).rejected is None
    freed = run([remove("a", seq + 1, sku="S0", ctx=line_vv(first))], cart)
    assert cart_bytes(freed) == cart_bytes(cart) - line_bytes(first)
    assert apply(freed, add("a", seq + 2, 1, sku="small", attrs={"k": "v"})).rejected is None


def test_the_size_of_a_line_is_that_of_its_wire_form() -> None:
    cart = run([add("a", 1, 2, hlc=7, attrs={"size": "M"}), add("b", 1, 1, sku="y")])
    for line in cart["lines"].values():
        assert line_bytes(line) == len(msgspec.msgpack.encode(wire_line(line)))
    assert cart_bytes(cart) == sum(line_bytes(line) for line in cart["lines"].values())


def test_at_most_max_dots_set_dots() -> None:
    # Mutually concurrent unresolved sets cannot be folded: the 17th is refused, until one is resolved.
    cart = run([set_(f"c{i}", 1, 1, hlc=i) for i in range(MAX_DOTS)])
    out = apply(cart, set_("late", 1, 5, hlc=99))
    assert out.rejected == "limit_exceeded"
    assert out.cart is cart
    assert apply(cart, set_("late", 1, 5, hlc=99, ctx={"c0": 1})).rejected is None
    # An add is folded, even when it is the only add-dot.
    out = apply(cart, add("late", 1, 2))
    assert out.rejected is None
    dots = out.cart["lines"]["x"]["dots"]
    assert dots[0] == ["~", 1, "b", 2, 0]
    assert len(dots) == MAX_DOTS + 1
    check_invariants(out.cart)


def test_folding_bounds_dots_and_vector() -> None:
    ops = [add(f"d{i:02}", 1, 1, hlc=i) for i in range(MAX_DOTS)]
    cart = run(ops)
    assert cart["folds"] == 0
    assert len(cart["lines"]["x"]["dots"]) == MAX_DOTS
    out = apply(cart, add("d16", 1, 1, hlc=16))
    line = out.cart["lines"]["x"]
    # 17 add-dots: the lowest is folded into a new base, first in the list.
    assert line["dots"][0] == ["~", 1, "b", 1, 0]
    assert [d[0] for d in line["dots"][1:]] == [f"d{i:02}" for i in range(1, 17)]
    assert len(line["vv"]) == MAX_DOTS + 1
    assert line["vv"]["~"] == 1
    assert "d00" not in line["vv"]
    assert line["qty"] == 17
    assert out.cart["folds"] == 1
    assert out.changed == {"x": wire_line(line)}
    # The next add folds one more into the same base, under a new number.
    line = apply(out.cart, add("d17", 1, 1, hlc=17)).cart["lines"]["x"]
    assert line["dots"][0] == ["~", 2, "b", 2, 0]
    assert line["qty"] == 18


def test_a_cart_touched_by_a_thousand_devices_stays_small() -> None:
    cart = empty_cart()
    for i in range(1000):
        cart = apply(cart, add(f"dev{i}", 1, 1)).cart
    line = cart["lines"]["x"]
    assert line["qty"] == 1000
    assert len(line["dots"]) == MAX_DOTS + 1
    assert len(line["vv"]) == MAX_DOTS + 1
    check_invariants(cart)


def test_set_dots_are_never_folded_and_fold_numbers_are_cart_wide() -> None:
    cart = run([set_("s", 1, 10, hlc=50), *[add(f"a{i}", 1, 1, hlc=i) for i in range(MAX_DOTS)]])
    line = cart["lines"]["x"]
    assert line["dots"][0] == ["~", 1, "b", 1, 0]
    assert ["s", 1, "s", 10, 50] in line["dots"]  # the set-dot stays, the lowest add went
    assert ["a0", 1, "a", 1, 0] not in line["dots"]
    assert line["qty"] == 10 + MAX_DOTS
    cart = run([add(f"b{i}", 1, 1, sku="y") for i in range(MAX_DOTS + 1)], cart)
    assert cart["lines"]["y"]["dots"][0] == ["~", 2, "b", 1, 0]  # the cart's second fold
    assert cart["folds"] == 2


def test_folding_makes_spurious_survivors_never_losses() -> None:
    cart = run([add(f"d{i:02}", 1, 1) for i in range(MAX_DOTS + 1)])  # base ~1 holds d00
    seen = line_vv(cart["lines"]["x"])
    assert seen["~"] == 1
    # A client that saw the base removes it with ctx["~"] >= 1.
    assert qty(run([remove("z", 1, ctx=seen)], cart)) == 0
    # A fold after the client looked gives the base a new number: the client's remove keeps the base's
    # quantity, including d00 that it had seen (a spurious survivor), and loses nothing it had not seen.
    later = run([add("new", 1, 5)], cart)  # folds d01 into base ~2
    out = apply(later, remove("z", 1, ctx=seen))
    assert out.cart["lines"]["x"]["dots"] == [["~", 2, "b", 2, 0], ["new", 1, "a", 5, 0]]
    assert out.result == {"qty": 7}


def test_attrs_belong_to_dots_and_the_greatest_key_shows() -> None:
    cart = run([add("a", 1, 1, hlc=5, attrs={"size": "M"})])
    line = cart["lines"]["x"]
    assert line == {
        "qty": 1,
        "attrs": {"size": "M"},
        "vv": {"a": 1},
        "dots": [["a", 1, "a", 1, 5, {"size": "M"}]],
    }
    assert wire_line(line) == line
    # A lower key (hlc) does not show, a greater one does; an op without attrs adds a dot without any.
    cart = run([add("b", 1, 1, hlc=4, attrs={"size": "S"}), add("c", 1, 1, hlc=9)], cart)
    assert cart["lines"]["x"]["attrs"] == {"size": "M"}
    assert cart["lines"]["x"]["dots"] == [
        ["b", 1, "a", 1, 4, {"size": "S"}],
        ["a", 1, "a", 1, 5, {"size": "M"}],
        ["c", 1, "a", 1, 9],
    ]
    cart = run([set_("d", 1, 3, hlc=6, ctx=cart_vv(cart), attrs={"size": "L", "gift": True, "n": 2})], cart)
    assert cart["lines"]["x"]["attrs"] == {"size": "L", "gift": True, "n": 2}
    assert cart["lines"]["x"]["dots"] == [["d", 1, "s", 3, 6, {"size": "L", "gift": True, "n": 2}]]
    # Ties on hlc break on client_id bytes ("D" < "d"), then seq.
    cart = run([add("D", 2, 1, hlc=6, attrs={"size": "XL"})], cart)
    assert cart["lines"]["x"]["attrs"]["size"] == "L"
    cart = run([add("d", 2, 1, hlc=6, attrs={"size": "XS"})], cart)
    assert cart["lines"]["x"]["attrs"] == {"size": "XS"}
    # Empty attrs: carried like any other, so they can win; the line then omits them.
    cart = run([add("e", 1, 1, hlc=8, attrs={})], cart)
    assert "attrs" not in cart["lines"]["x"]
    assert cart["lines"]["x"]["dots"][-1] == ["e", 1, "a", 1, 8, {}]
    assert line_attrs(cart["lines"]["x"]) == {}
    # set(0) is a remove: its attrs are ignored (here it removes nothing).
    out = apply(cart, set_("f", 1, 0, hlc=99, ctx={"zz": 1}, attrs={"size": "XXL"}))
    assert out.changed == {}
    assert "attrs" not in out.cart["lines"]["x"]


def test_attrs_go_with_their_dot() -> None:
    cart = run([add("a", 1, 1, hlc=5, attrs={"gift": True}), add("b", 1, 1, hlc=6, attrs={"gift": False})])
    assert cart["lines"]["x"]["attrs"] == {"gift": False}
    # Removing the winning dot shows the next one's attrs, as if it had never been written.
    assert run([remove("c", 1, ctx={"b": 1})], cart)["lines"]["x"]["attrs"] == {"gift": True}
    assert run([clear("c", 1, ctx={"b": 1})], cart)["lines"]["x"]["attrs"] == {"gift": True}
    # Removing the only dots that carry attrs leaves a line without any.
    cart = run([add("d", 1, 1, hlc=7)], cart)
    assert "attrs" not in run([remove("c", 1, ctx={"a": 1, "b": 1})], cart)["lines"]["x"]
    # A line that ceases to exist loses its attrs with its dots.
    gone = run([remove("c", 1, ctx=cart_vv(cart))], cart)
    assert "attrs" not in run([add("a", 2, 1, hlc=1)], gone)["lines"]["x"]


def test_set_without_attrs_removes_the_attrs_it_saw() -> None:
    # A set's own dot carries only the attrs the set carried; the dots it saw go, attrs included. (The SDK
    # sends the attrs it shows with a set the application gave none, so "change the quantity" keeps them.)
    cart = run([add("a", 1, 1, hlc=5, attrs={"gift": True})])
    unseen = add("b", 1, 1, hlc=4, attrs={"note": "b"})
    bare = set_("c", 1, 3, hlc=9, ctx={"a": 1})
    for order in ([unseen, bare], [bare, unseen]):
        line = run(order, cart)["lines"]["x"]
        assert line["attrs"] == {"note": "b"}  # the concurrent add's attrs survive with its dot
        assert line["qty"] == 4
    kept = run([set_("c", 1, 3, hlc=9, ctx={"a": 1}, attrs={"gift": True})], cart)["lines"]["x"]
    assert kept["dots"] == [["c", 1, "s", 3, 9, {"gift": True}]]
    assert "attrs" not in run([bare], cart)["lines"]["x"]


def test_attrs_converge_when_a_remove_races_an_add_with_older_attrs() -> None:
    """The review's counterexample to the old per-line register: now both orders give the same line.

    ``d0`` carries attrs with hlc 9; ``rm`` saw ``d0`` and removes the line; ``late`` is an add concurrent
    with both whose attrs carry a lower hlc. ``d0``'s attrs go with ``d0``, so ``late``'s show either way.
    """
    cart = run([add("a", 1, 1, hlc=9, attrs={"note": "old"})])
    rm = remove("b", 1, ctx={"a": 1})
    late = add("c", 1, 1, hlc=5, attrs={"note": "new"})
    first = run([late, rm], cart)
    second = run([rm, late], cart)
    assert first == second
    assert first["lines"]["x"] == {
        "qty": 1,
        "attrs": {"note": "new"},
        "vv": {"c": 1},
        "dots": [["c", 1, "a", 1, 5, {"note": "new"}]],
    }


def test_dot_order_is_canonical_whatever_the_arrival_order() -> None:
    ops = [add("b", 1, 1, hlc=3), add("a", 1, 2, hlc=3), set_("B", 1, 5, hlc=1), add("a", 2, 1, hlc=2)]
    want = [["B", 1, "s", 5, 1], ["a", 2, "a", 1, 2], ["a", 1, "a", 2, 3], ["b", 1, "a", 1, 3]]
    assert run(ops)["lines"]["x"]["dots"] == want
    assert run(ops[::-1])["lines"]["x"]["dots"] == want
    assert run(ops)["lines"]["x"] == run(ops[::-1])["lines"]["x"]


def test_folding_folds_the_lowest_add_dots_even_the_new_one() -> None:
    # A dot whose clock is behind lands low in the order, and is folded at once if it is the lowest add.
    cart = run([add(f"d{i:02}", 1, 1, hlc=10 + i) for i in range(MAX_DOTS)])
    out = apply(cart, add("slow", 1, 7, hlc=1))
    line = out.cart["lines"]["x"]
    assert line["dots"][0] == ["~", 1, "b", 7, 0]
    assert [d[0] for d in line["dots"][1:]] == [f"d{i:02}" for i in range(MAX_DOTS)]
    assert line["vv"] == {**{f"d{i:02}": 1 for i in range(MAX_DOTS)}, "~": 1}


def test_a_fold_keeps_the_attrs_with_the_key_they_came_from() -> None:
    # A set-dot with attrs and a lower key than the add-dot whose attrs show: after that add is folded, the
    # base must still outrank the set's attrs, so it carries the folded dot's key.
    cart = run(
        [
            set_("s", 1, 2, hlc=1, attrs={"gift": False}),
            add("a", 1, 1, hlc=2, attrs={"gift": True}),
            *[add(f"d{i:02}", 1, 1, hlc=10 + i) for i in range(MAX_DOTS - 2)],
        ]
    )
    assert cart["folds"] == 0
    assert cart["lines"]["x"]["attrs"] == {"gift": True}
    out = apply(cart, add("z", 1, 1, hlc=99))
    line = out.cart["lines"]["x"]
    assert line["dots"][0] == ["~", 1, "b", 1, 0, {"gift": True}, [2, "a", 1]]
    assert line["attrs"] == {"gift": True}
    assert line["qty"] == cart["lines"]["x"]["qty"] + 1
    # Folding the base again keeps the key it carries; a greater folded key replaces it.
    line = apply(out.cart, add("y", 1, 1, hlc=100)).cart["lines"]["x"]
    assert line["dots"][0] == ["~", 2, "b", 2, 0, {"gift": True}, [2, "a", 1]]
    cart = run([add("w", 1, 1, hlc=3, attrs={"gift": "w"}), add("v", 1, 1, hlc=101)], out.cart)
    assert cart["lines"]["x"]["dots"][0] == ["~", 3, "b", 3, 0, {"gift": "w"}, [3, "w", 1]]
    assert cart["lines"]["x"]["attrs"] == {"gift": "w"}
    # A remove that covers the base removes its attrs: the set's show again.
    out = apply(cart, remove("r", 1, ctx={"~": 3}))
    assert out.cart["lines"]["x"]["attrs"] == {"gift": False}
    # A greater live key outranks the base's.
    out = apply(cart, add("u", 1, 1, hlc=4, attrs={"gift": "u"}))
    assert out.cart["lines"]["x"]["attrs"] == {"gift": "u"}


def test_predict_never_folds_nor_bounds_set_dots() -> None:
    cart = run([add(f"d{i:02}", 1, 1, hlc=i) for i in range(MAX_DOTS)])
    out = predict(cart, add("me", 1, 1, hlc=99))
    assert out.cart["folds"] == 0
    assert len(out.cart["lines"]["x"]["dots"]) == MAX_DOTS + 1
    sets = run([set_(f"c{i}", 1, 1, hlc=i) for i in range(MAX_DOTS)])
    assert predict(sets, set_("late", 1, 5, hlc=99)).rejected is None
    assert apply(sets, set_("late", 1, 5, hlc=99)).rejected == "limit_exceeded"
    full = run([add("a", i + 1, 1, sku=f"s{i}") for i in range(MAX_LINES)])
    assert predict(full, add("a", 1000, 1, sku="new")).rejected == "limit_exceeded"
    assert predict(full, add("a", 1000, 1, sku="s0")).result == {"qty": 2}
    assert predict(full, add("a", 1000, 0, sku="s0")).rejected == "bad_args"


def test_apply_never_mutates_its_input() -> None:
    cart = run([add("a", 1, 2, attrs={"k": 1}), set_("b", 1, 3, hlc=1), add("c", 1, 1, sku="y")])
    frozen = copy.deepcopy(cart)
    for o in [
        add("d", 1, 1),
        set_("d", 1, 5, ctx={"a": 1}, attrs={"k": 2}),
        remove("d", 1, ctx=cart_vv(cart)),
        clear("d", 1, ctx=cart_vv(cart)),
        *[add(f"e{i}", 1, 1) for i in range(20)],
    ]:
        apply(cart, o)
        assert cart == frozen


def test_snapshot() -> None:
    cart = run([add("a", 1, 2, attrs={"k": "v"}), add("b", 1, 1, sku="y")])
    assert snapshot(cart) == {
        "lines": {
            "x": {"qty": 2, "attrs": {"k": "v"}, "vv": {"a": 1}, "dots": [["a", 1, "a", 2, 0, {"k": "v"}]]},
            "y": {"qty": 1, "vv": {"b": 1}, "dots": [["b", 1, "a", 1, 0]]},
        }
    }
    assert snapshot(empty_cart()) == {"lines": {}}


def test_line_and_cart_vectors() -> None:
    line: Line = {
        "qty": 0,
        "vv": {},
        "dots": [["~", 3, "b", 2, 0], ["a", 4, "a", 1, 0], ["a", 2, "s", 5, 9], ["b", 1, "a", 1, 0]],
    }
    assert line_vv(line) == {"a": 4, "b": 1, "~": 3}
    assert line_qty(line) == 5 + 2 + 1 + 1
    cart: Cart = {"lines": {"x": line, "y": {"qty": 0, "vv": {}, "dots": [["a", 9, "a", 1, 0]]}}, "folds": 3}
    assert cart_vv(cart) == {"a": 9, "b": 1, "~": 3}
    assert cart_vv(empty_cart()) == {}


# --- validation ----------------------------------------------------------------------------------------

VALID = [
    add("a", 1, 1),
    add("a", 1, 999, attrs={"k" * 64: "v" * 256, "i": -(2**53 - 1), "b": False}),
    set_("a", 2**53 - 1, 0, hlc=2**53 - 1, ctx={"b": 2**53 - 1, "~": 1}),
    set_("a", 1, 9999, sku="A-z_0.9@x" + "y" * 55),
    remove("a.b:c-d_e", 1),
    clear("a", 1, ctx={"a": 0}),
]

INVALID = [
    op("cart.nope", "a", 1),
    op(ADD, "~", 1, "x", 1),  # the base's name
    op(ADD, "", 1, "x", 1),
    op(ADD, "a b", 1, "x", 1),
    op(ADD, "c" * 65, 1, "x", 1),
    op(ADD, "a", 0, "x", 1),
    op(ADD, "a", 2**53, "x", 1),
    op(ADD, "a", True, "x", 1),
    op(ADD, "a", 1, "x", 1, hlc=-1),
    op(ADD, "a", 1, "x", 1, hlc=2**53),
    op(ADD, "a", 1, "x", 1, ctx={"b": -1}),
    op(ADD, "a", 1, "x", 1, ctx={"b": 1.0}),  # type: ignore[dict-item]
    op(ADD, "a", 1, "x", 1, ctx={1: 1}),  # type: ignore[dict-item]
    CartOp(ADD, "a", 1, 0, [("b", 1)], "x", 1),  # type: ignore[arg-type]
    op(CLEAR, "a", 1, "x"),
    op(CLEAR, "a", 1, None, 1),
    op(CLEAR, "a", 1, None, attrs={}),
    op(ADD, "a", 1, None, 1),
    op(ADD, "a", 1, "", 1),
    op(ADD, "a", 1, "x:y", 1),
    op(ADD, "a", 1, "x" * 65, 1),
    op(REMOVE, "a", 1, "x", 1),
    op(REMOVE, "a", 1, "x", attrs={}),
    op(ADD, "a", 1, "x", 0),
    op(ADD, "a", 1, "x", 1000),
    op(ADD, "a", 1, "x", None),
    op(ADD, "a", 1, "x", True),
    op(SET, "a", 1, "x", -1),
    op(SET, "a", 1, "x", 10000),
    op(SET, "a", 1, "x", 2.0),  # type: ignore[arg-type]
    op(ADD, "a", 1, "x", 1, attrs=[("k", "v")]),  # type: ignore[arg-type]
    op(ADD, "a", 1, "x", 1, attrs={f"k{i}": i for i in range(17)}),
    op(ADD, "a", 1, "x", 1, attrs={"": 1}),
    op(ADD, "a", 1, "x", 1, attrs={"k" * 65: 1}),
    op(ADD, "a", 1, "x", 1, attrs={1: 1}),  # type: ignore[dict-item]
    op(ADD, "a", 1, "x", 1, attrs={"k": "v" * 257}),
    op(ADD, "a", 1, "x", 1, attrs={"k": 2**53}),
    op(ADD, "a", 1, "x", 1, attrs={"k": 1.5}),
    op(ADD, "a", 1, "x", 1, attrs={"k": None}),
    op(ADD, "a", 1, "x", 1, attrs={"k": ["v"]}),
]


@pytest.mark.parametrize("o", VALID)
def test_valid_ops(o: CartOp) -> None:
    assert check_op(o) is None
    assert apply(empty_cart(), o).rejected is None


@pytest.mark.parametrize("o", INVALID)
def test_invalid_ops_are_rejected_bad_args(o: CartOp) -> None:
    assert isinstance(check_op(o), str)
    cart = run([add("z", 1, 1)])
    out = apply(cart, o)
    assert (out.rejected, out.cart, out.changed, out.result, out.conflict) == (
        "bad_args",
        cart,
        {},
        None,
        None,
    )


def test_patterns_agree_with_topic_keys() -> None:
    assert cart_rules.SKU_PATTERN.pattern == topics.KEY_PATTERN.pattern


def test_parse_op() -> None:
    o = parse_op(
        ADD,
        {"member": "m1", "sku": "x", "qty": 2, "attrs": {"k": 1}, "future": 1},
        client_id="a",
        seq=3,
        hlc=7,
        ctx={"b": 1},
    )
    assert o == CartOp(ADD, "a", 3, 7, {"b": 1}, "x", 2, {"k": 1})
    assert parse_op(SET, {"member": "m1", "sku": "x", "qty": 0, "attrs": None}, client_id="a", seq=1) == (
        CartOp(SET, "a", 1, 0, {}, "x", 0, None)
    )
    # Keys the op does not use are ignored.
    assert parse_op(REMOVE, {"member": "m1", "sku": "x", "qty": 5}, client_id="a", seq=1) == CartOp(
        REMOVE, "a", 1, 0, {}, "x"
    )
    assert parse_op(CLEAR, {"member": "m1", "sku": "x"}, client_id="a", seq=1, ctx={"a": 1}) == CartOp(
        CLEAR, "a", 1, 0, {"a": 1}
    )


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        (ADD, []),
        (ADD, {"sku": "x", "qty": 1}),
        (ADD, {"member": "", "sku": "x", "qty": 1}),
        (ADD, {"member": "m:1", "sku": "x", "qty": 1}),
        (ADD, {"member": "m", "qty": 1}),
        (ADD, {"member": "m", "sku": "x"}),
        (ADD, {"member": "m", "sku": "x", "qty": "1"}),
        (SET, {"member": "m", "sku": "x", "qty": 1, "attrs": "gift"}),
        ("cart.nope", {"member": "m"}),
    ],
)
def test_parse_op_rejects(kind: str, args: Any) -> None:
    with pytest.raises(CartArgsError) as exc:
        parse_op(kind, args, client_id="a", seq=1)
    assert exc.value.code == "bad_args"


# --- properties: random concurrent histories -----------------------------------------------------------

CLIENTS = ["a", "b", "B", "c"]
SKUS = ["x", "x", "y"]  # mostly one line: more concurrency on it


class Spec:
    """An op as a client decides it: what, and how much of the hub's history it has seen (a prefix)."""

    def __init__(
        self, client: str, kind: str, sku: str, amount: int, hlc: int, attrs: Any, seen: int
    ) -> None:
        self.client, self.kind, self.sku, self.amount = client, kind, sku, amount
        self.hlc, self.attrs, self.seen = hlc, attrs, seen


@st.composite
def specs(
    draw: st.DrawFn,
    max_ops: int,
    kinds: list[str],
    with_attrs: bool,
    min_set: int = 0,
    skus: list[str] = SKUS,
) -> list[Spec]:
    """A history in hub order: each op names the prefix of the hub's history its client had seen."""
    n = draw(st.integers(min_value=1, max_value=max_ops))
    seen = dict.fromkeys(CLIENTS, 0)
    out: list[Spec] = []
    for i in range(n):
        client = draw(st.sampled_from(CLIENTS))
        # A client sees more of the history over time, never less (its view is a gap-free prefix).
        seen[client] = draw(st.integers(min_value=seen[client], max_value=i))
        kind = draw(st.sampled_from(kinds))
        amount = draw(st.integers(min_value=1, max_value=3))
        if kind == SET:
            amount = draw(st.integers(min_value=min_set, max_value=4))
        attrs = (
            draw(st.none() | st.just({}) | st.fixed_dictionaries({"k": st.integers(0, 3)}))
            if with_attrs
            else None
        )
        hlc = draw(st.integers(min_value=0, max_value=4))  # small: plenty of ties
        out.append(Spec(client, kind, draw(st.sampled_from(skus)), amount, hlc, attrs, seen[client]))
    return out


def materialise(
    history: list[Spec], max_dots: int = MAX_DOTS
) -> tuple[list[CartOp | None], list[Cart], list[Cart]]:
    """Play a history on two hubs: one folding at ``max_dots``, one that never folds.

    Each client derives ``ctx`` from its own view on each hub: the hub's state after the prefix it saw plus
    its own later ops, predicted locally without folding (the SDK never folds). An op the folding hub
    rejects is dropped from both (a rejected op is settled and changes nothing). Returns the ops (``None``
    where dropped) and both hubs' states after each prefix.
    """
    folded, plain = [empty_cart()], [empty_cart()]
    ops: list[CartOp | None] = []
    plain_ops: list[CartOp | None] = []
    seqs = dict.fromkeys(CLIENTS, 0)
    for spec in history:
        seqs[spec.client] += 1
        made: list[CartOp] = []
        for states, done in ((folded, ops), (plain, plain_ops)):
            view = states[spec.seen]
            for own in done[spec.seen :]:
                if own is not None and own.client_id == spec.client:
                    view = predict(view, own).cart
            if spec.kind == CLEAR:
                ctx, sku, amount = cart_vv(view), None, None
            else:
                line = view["lines"].get(spec.sku)
                ctx, sku, amount = (line_vv(line) if line else {}), spec.sku, spec.amount
            attrs = spec.attrs if spec.kind in (ADD, SET) else None
            amount = None if spec.kind == REMOVE else amount
            made.append(CartOp(spec.kind, spec.client, seqs[spec.client], spec.hlc, ctx, sku, amount, attrs))
        out_f = cart_rules._apply(folded[-1], made[0], max_dots)
        if out_f.rejected is not None:
            assert out_f.rejected == "limit_exceeded"
            ops.append(None)
            plain_ops.append(None)
            folded.append(folded[-1])
            plain.append(plain[-1])
            continue
        out_p = predict(plain[-1], made[1])
        assert out_p.rejected is None
        check_invariants(out_f.cart, max_dots)
        ops.append(made[0])
        plain_ops.append(made[1])
        folded.append(out_f.cart)
        plain.append(out_p.cart)
    return ops, folded, plain


def reorder(data: st.DataObject, ops: list[CartOp]) -> list[CartOp]:
    """A random order of ``ops`` that keeps each client's seq order and puts every op after the dots its
    ``ctx`` covers (what the hub guarantees: covered dots were always applied first)."""
    deps = causal_deps(ops)
    # A random priority per op; at each step the ready op with the best priority goes next. (Drawing an index
    # per step would shrink towards the hub order itself.)
    priority = data.draw(st.permutations(range(len(ops))))
    done: set[int] = set()
    order: list[CartOp] = []
    while len(order) < len(ops):
        pick = min(
            (i for i in range(len(ops)) if i not in done and deps[i] <= done), key=priority.__getitem__
        )
        done.add(pick)
        order.append(ops[pick])
    return order


def causal_deps(ops: list[CartOp]) -> list[set[int]]:
    """For each op, the ops that must come before it: its client's earlier ops and every op whose dot its
    ``ctx`` covers (what the hub guarantees: covered dots were always applied first)."""
    index = {(o.client_id, o.seq): i for i, o in enumerate(ops)}
    deps: list[set[int]] = []
    for i, o in enumerate(ops):
        need = {j for j, p in enumerate(ops[:i]) if p.client_id == o.client_id}
        for c, s in o.ctx.items():
            # Every op of c up to seq s: the covered dots and c's earlier ops.
            need |= {j for (cc, ss), j in index.items() if cc == c and ss <= s}
        deps.append(need)
    return deps


def every_causal_order_ends(ops: list[CartOp]) -> Iterator[tuple[list[int], Cart]]:
    """Every order of ``ops`` that respects :func:`causal_deps`, with the cart it ends in (depth first, each
    prefix applied once)."""
    deps = causal_deps(ops)

    def walk(done: list[int], cart: Cart) -> Iterator[tuple[list[int], Cart]]:
        if len(done) == len(ops):
            yield done, cart
            return
        for i in range(len(ops)):
            if i not in done and deps[i] <= set(done):
                out = apply(cart, ops[i])
                assert out.rejected is None
                yield from walk([*done, i], out.cart)

    yield from walk([], empty_cart())


PROPS = settings(max_examples=examples(150), deadline=None)
ALL_KINDS = [ADD, SET, SET, REMOVE, CLEAR]


@settings(max_examples=examples(200), deadline=None)
@given(specs(max_ops=7, kinds=ALL_KINDS, with_attrs=True))
def test_convergence_every_causal_interleaving_gives_the_same_cart(history: list[Spec]) -> None:
    """The whole state - quantities, attrs, vectors, the dots and their order, the fold counter - is the
    same after every order the hub could have applied the ops in, byte for byte (no folding here)."""
    ops, folded, _ = materialise(history)
    applied = [o for o in ops if o is not None]
    assert len(applied) == len(ops)
    orders = 0
    for order, end in every_causal_order_ends(applied):
        assert end == folded[-1], order
        assert snapshot(end) == snapshot(folded[-1])
        orders += 1
    assert orders >= 1


@PROPS
@given(specs(max_ops=MAX_DOTS, kinds=ALL_KINDS, with_attrs=True), st.data())
def test_convergence_any_causal_interleaving_gives_the_same_cart(
    history: list[Spec], data: st.DataObject
) -> None:
    ops, folded, _ = materialise(history)
    applied = [o for o in ops if o is not None]
    assert len(applied) == len(ops)  # no limit is reachable with 16 ops
    assert folded[-1]["folds"] == 0  # and no folding: this property is about the exact rules
    again = run(reorder(data, applied))
    assert again == folded[-1]


FOLD_PROPS = settings(max_examples=examples(120), deadline=None)


@FOLD_PROPS
@given(
    st.sampled_from([1, 2, 4, MAX_DOTS]).flatmap(
        lambda m: st.tuples(
            st.just(m),
            # Mostly adds, so that lines grow past the bound; the more so the higher the bound.
            specs(
                max_ops=3 * m + 8,
                kinds=[ADD] * (m // 2 + 3) + [SET, REMOVE, CLEAR],
                with_attrs=True,
                skus=["x"],
            ),
        )
    )
)
def test_folding_only_ever_keeps_more(case: tuple[int, list[Spec]]) -> None:
    """Folding vs never folding, on the same history with each client's ctx from what it saw on each hub.

    What is true (and what docs/cart-rules.md promises): set-dots are never folded, so the same set-dots are
    live and the same set wins; a fold only hides which add-dots a later ``ctx`` saw, so a remove or set may
    keep them (spurious survivors) but never removes one it did not see. Hence every line's quantity with
    folding is >= the quantity without, and a line that exists without folding exists with it. (Not true:
    "equal": a remove that saw a folded add may keep it.) And a fold itself changes nothing a reader sees:
    the op that folds gives the same quantity, attrs and conflict as the same op without folding.
    """
    max_dots, history = case
    ops, folded, plain = materialise(history, max_dots)
    for i, o in enumerate(ops):
        if o is None:
            continue
        unfolded = predict(folded[i], o).cart
        assert set(unfolded["lines"]) == set(folded[i + 1]["lines"])
        for sku, line in unfolded["lines"].items():
            f_line = folded[i + 1]["lines"][sku]
            assert (f_line["qty"], f_line.get("attrs")) == (line["qty"], line.get("attrs"))
            assert conflict_of(sku, f_line) == conflict_of(sku, line)
    for f, p in zip(folded, plain, strict=True):
        for sku, line in p["lines"].items():
            assert sku in f["lines"]
            f_line = f["lines"][sku]
            assert f_line["qty"] >= line["qty"]
            f_sets = sorted(tuple(d) for d in f_line["dots"] if d[2] == "s")
            assert f_sets == sorted(tuple(d) for d in line["dots"] if d[2] == "s")
        for sku, f_line in f["lines"].items():
            if sku not in p["lines"]:  # a spurious survivor: only ever folded or unseen adds
                assert all(d[2] != "s" for d in f_line["dots"])
        check_invariants(f, max_dots)
