"""Each cart rule of docs/cart-rules.md, through the Lua scripts on real Redis and on a Redis Cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocol import frames
from syncd.store import RedisStore

Devices = Callable[..., Any]


async def test_concurrent_adds_all_count(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 2)
    outcome = await b.add("tea", 1)  # b saw nothing of a's add: concurrent, and both count
    assert outcome.ok and outcome.result == {"qty": 3}
    line = (await a.lines())["tea"]
    assert line == {"qty": 3, "vv": {"a": 1, "b": 1}, "dots": [["a", 1, "a", 2, 0], ["b", 1, "a", 1, 0]]}


async def test_set_that_saw_the_line_replaces_it(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 2)
    await a.add("tea", 3)
    outcome = await b.set("tea", 1, ctx={"a": 2}, hlc=7)
    assert outcome.result == {"qty": 1} and outcome.conflict is None
    assert (await a.lines())["tea"]["dots"] == [["b", 1, "s", 1, 7]]


async def test_concurrent_sets_pick_a_winner_by_hlc_and_report_the_loser(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 1)
    await a.set("tea", 5, ctx={"a": 1}, hlc=20)
    outcome = await b.set("tea", 9, ctx={"a": 1}, hlc=10)  # b saw only the add: concurrent with a's set
    assert outcome.ok
    assert outcome.result == {"qty": 5}  # a's set has the greater hlc
    conflict = {"sku": "tea", "winner": ["a", 2, 5], "losers": [["b", 1, 9]]}
    assert outcome.conflict == conflict
    assert outcome.event is not None and outcome.event.conflict == conflict


async def test_set_tie_on_hlc_is_broken_by_client_id_bytes_then_seq(device: Devices) -> None:
    # "a" (0x61) > "B" (0x42) by bytes, though a locale-aware comparison would put "a" first.
    upper, lower = device("B"), device("a")
    await upper.set("tea", 4, ctx={}, hlc=5)
    outcome = await lower.set("tea", 6, ctx={}, hlc=5)
    assert outcome.result == {"qty": 6}
    assert outcome.conflict == {"sku": "tea", "winner": ["a", 1, 6], "losers": [["B", 1, 4]]}


async def test_loser_wins_once_the_winner_is_removed(device: Devices) -> None:
    a, b, c = device("a"), device("b"), device("c")
    await a.set("tea", 5, ctx={}, hlc=20)
    await b.set("tea", 9, ctx={}, hlc=10)
    outcome = await c.remove("tea", ctx={"a": 1})  # c saw only the winner
    assert outcome.result == {"qty": 9} and outcome.conflict is None


async def test_remove_keeps_what_it_did_not_see(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 2)  # b sees this one …
    await a.add("tea", 1)  # … but not this one
    outcome = await b.remove("tea", ctx={"a": 1})
    assert outcome.result == {"qty": 1}
    assert (await a.lines())["tea"]["dots"] == [["a", 2, "a", 1, 0]]


async def test_add_survives_a_concurrent_set(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 1)
    await a.add("tea", 2)  # unseen by b
    outcome = await b.set("tea", 5, ctx={"a": 1})
    assert outcome.result == {"qty": 7}  # the set's 5 + the concurrent add's 2
    assert outcome.conflict is None


async def test_remove_of_everything_seen_deletes_the_line_and_reports_null(device: Devices) -> None:
    a = device("a")
    await a.add("tea", 2, attrs={"size": "L"})
    outcome = await a.remove("tea", ctx={"a": 1})
    assert outcome.result == {"qty": 0}
    assert outcome.event is not None and outcome.event.data == {"lines": {"tea": None}}
    assert await a.lines() == {}
    # A line that ceases to exist loses its attrs with its dots.
    await a.add("tea", 1)
    assert "attrs" not in (await a.lines())["tea"]


async def test_set_zero_is_a_remove_and_ignores_attrs(device: Devices) -> None:
    a, b, c = device("a"), device("b"), device("c")
    await a.add("tea", 2, attrs={"size": "L"}, hlc=1)
    await b.add("tea", 1, hlc=2)
    outcome = await c.set("tea", 0, ctx={"b": 1}, hlc=99, attrs={"size": "S"})
    assert outcome.result == {"qty": 2}
    assert (await a.lines())["tea"] == {
        "qty": 2,
        "attrs": {"size": "L"},
        "vv": {"a": 1},
        "dots": [["a", 1, "a", 2, 1, {"size": "L"}]],
    }


async def test_attrs_go_with_their_dot_so_a_racing_remove_converges(device: Devices) -> None:
    # The old per-line register kept "old" here when the add arrived before the remove.
    a, b, c = device("a"), device("b"), device("c")
    await a.add("tea", 1, attrs={"note": "old"}, hlc=9)
    await c.add("tea", 1, attrs={"note": "new"}, hlc=5)  # concurrent with b's remove, arrives first
    outcome = await b.remove("tea", ctx={"a": 1})
    assert outcome.event is not None
    line = {
        "qty": 1,
        "attrs": {"note": "new"},
        "vv": {"c": 1},
        "dots": [["c", 1, "a", 1, 5, {"note": "new"}]],
    }
    assert outcome.event.data == {"lines": {"tea": line}}
    assert (await a.lines())["tea"] == line


async def test_dots_are_kept_in_canonical_order(device: Devices) -> None:
    a, b, c = device("a"), device("b"), device("c")
    await c.add("tea", 1, hlc=7)
    await b.add("tea", 1, hlc=3)
    await a.set("tea", 4, ctx={}, hlc=3, attrs={"k": 1})
    await b.add("tea", 2, hlc=1)
    line = (await a.lines())["tea"]
    assert line["dots"] == [
        ["b", 2, "a", 2, 1],
        ["a", 1, "s", 4, 3, {"k": 1}],
        ["b", 1, "a", 1, 3],
        ["c", 1, "a", 1, 7],
    ]


async def test_op_that_changes_nothing_is_still_an_event_with_no_lines(device: Devices) -> None:
    a = device("a")
    outcome = await a.remove("absent", ctx={})
    assert outcome.ok and outcome.result == {"qty": 0} and outcome.offset == 1
    assert outcome.event is not None and outcome.event.data == {"lines": {}}


async def test_clear_removes_only_the_observed_lines(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 2)
    await a.add("cake", 1)
    await a.add("milk", 3)  # unseen by b
    outcome = await b.clear(ctx={"a": 2})
    assert outcome.result == {"lines": 1}
    assert outcome.event is not None
    assert outcome.event.data == {"lines": {"cake": None, "tea": None}}
    assert set(await a.lines()) == {"milk"}


async def test_clear_reports_the_first_conflict_left_in_sku_byte_order(device: Devices) -> None:
    a, b, c = device("a"), device("b"), device("c")
    for sku in ("tea", "Zed"):
        await a.set(sku, 1, ctx={}, hlc=1)
        await b.set(sku, 2, ctx={}, hlc=2)
    outcome = await c.clear(ctx={})
    assert outcome.result == {"lines": 2}
    assert outcome.conflict == {"sku": "Zed", "winner": ["b", 2, 2], "losers": [["a", 2, 1]]}


async def test_attrs_register_keeps_the_greatest_hlc_whatever_the_arrival_order(device: Devices) -> None:
    a, b = device("a"), device("b")
    await a.add("tea", 1, attrs={"size": "L", "gift": True}, hlc=50)
    await b.add("tea", 1, attrs={"size": "S"}, hlc=40)  # arrives later, but older by hlc: loses
    line = (await a.lines())["tea"]
    assert line["attrs"] == {"size": "L", "gift": True} and line["qty"] == 2
    await b.add("tea", 1, attrs={"size": "M", "n": 3}, hlc=60)
    assert (await a.lines())["tea"]["attrs"] == {"size": "M", "n": 3}


async def test_empty_attrs_is_a_write_of_no_attrs(device: Devices, store: RedisStore) -> None:
    a = device("a")
    await a.add("tea", 1, attrs={"size": "L"}, hlc=1)
    await a.add("tea", 1, attrs={}, hlc=2)
    assert "attrs" not in (await a.lines())["tea"]
    stored = (await store.load_cart("m1"))["lines"]["tea"]
    assert "attrs" not in stored
    assert stored["dots"] == [["a", 1, "a", 1, 1, {"size": "L"}], ["a", 2, "a", 1, 2, {}]]


async def test_seventeenth_dot_folds_the_lowest_add_into_a_base_dot(
    device: Devices, store: RedisStore
) -> None:
    devices = [device(f"d{i:02}") for i in range(17)]
    for i, d in enumerate(devices):
        outcome = await d.add("tea", i + 1, hlc=i + 1)
    line = (await devices[0].lines())["tea"]
    assert line["qty"] == sum(range(1, 18))
    assert len(line["dots"]) == 17  # 16 dots + the base
    assert line["dots"][0] == ["~", 1, "b", 1, 0]
    assert "d00" not in line["vv"] and line["vv"]["~"] == 1
    assert outcome.event is not None and outcome.event.data["lines"]["tea"] == line
    # The next fold anywhere in the cart takes the next number and absorbs the old base.
    await devices[0].add("tea", 100, hlc=100)
    line = (await devices[0].lines())["tea"]
    assert line["dots"][0] == ["~", 2, "b", 1 + 2, 0] and len(line["dots"]) == 17
    assert (await store.load_cart("m1"))["folds"] == 2


async def test_a_fold_keeps_the_folded_attrs_with_their_key(device: Devices) -> None:
    # The set's attrs have a lower key than the add's that show; once that add is folded, the base carries
    # its attrs and its key, so the line still shows them.
    await device("s").set("tea", 2, ctx={}, hlc=1, attrs={"gift": False})
    await device("a").add("tea", 1, hlc=2, attrs={"gift": True})
    for i in range(15):  # the 17th live dot folds the lowest add: a's
        outcome = await device(f"d{i:02}").add("tea", 1, hlc=10 + i)
    line = (await device("x").lines())["tea"]
    assert line["dots"][0] == ["~", 1, "b", 1, 0, {"gift": True}, [2, "a", 1]]
    assert line["attrs"] == {"gift": True} and line["qty"] == 2 + 1 + 15
    assert outcome.event is not None and outcome.event.data["lines"]["tea"] == line
    outcome = await device("r").remove("tea", ctx={"~": 1})  # removes the base, attrs included
    assert (await device("x").lines())["tea"]["attrs"] == {"gift": False}


async def test_base_dot_is_covered_by_the_hub_entry(device: Devices) -> None:
    devices = [device(f"d{i:02}") for i in range(17)]
    for d in devices:
        await d.add("tea", 1)
    line = (await devices[0].lines())["tea"]
    outcome = await devices[0].remove("tea", ctx=line["vv"])
    assert outcome.result == {"qty": 0}
    # Without "~" in ctx the base survives: a spurious survivor, never a loss.
    for d in devices:
        await d.add("cake", 1)
    vv = dict((await devices[0].lines())["cake"]["vv"])
    del vv["~"]
    outcome = await devices[0].remove("cake", ctx=vv)
    assert outcome.result == {"qty": 1}  # the base, holding the one folded add


async def test_seventeenth_concurrent_set_is_limit_exceeded(device: Devices) -> None:
    devices = [device(f"d{i:02}") for i in range(17)]
    for d in devices[:16]:
        assert (await d.set("tea", 1, ctx={})).ok
    outcome = await devices[16].set("tea", 1, ctx={})
    assert not outcome.ok and outcome.code == "limit_exceeded" and outcome.event is None
    assert len((await devices[0].lines())["tea"]["dots"]) == 16


async def test_line_201_is_limit_exceeded_and_changes_nothing(device: Devices, store: RedisStore) -> None:
    a = device("a")
    for i in range(200):
        assert (await a.add(f"sku{i}", 1)).ok
    cursor, _ = await store.snapshot("cart:m1")
    outcome = await a.add("sku200", 1)
    assert (outcome.ok, outcome.code, outcome.event) == (False, "limit_exceeded", None)
    assert (await store.snapshot("cart:m1"))[0] == cursor  # no event
    assert (await a.add("sku0", 1)).ok  # existing lines still grow
    assert (await a.set("sku201", 0, ctx={})).ok  # set(0) creates nothing, so it is not refused


async def test_event_is_the_complete_ev_frame_with_origin_and_commit_time(device: Devices) -> None:
    a = device("pos-1")
    outcome = await a.add("tea", 2, hlc=3)
    event = outcome.event
    assert event is not None and outcome.event_frame is not None
    assert event.topic == "cart:m1" and event.kind == "cart.add" and event.cursor.offset == 1
    assert event.origin == frames.Origin("pos-1", 1)
    assert event.at > 0
    assert type(event) is frames.Event
    assert isinstance(event.cursor.epoch, str) and event.cursor.epoch


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("cart.add", {"sku": "tea", "qty": 0}),
        ("cart.add", {"sku": "tea", "qty": 1000}),
        ("cart.add", {"sku": "tea", "qty": True}),
        ("cart.set", {"sku": "tea", "qty": 10000}),
        ("cart.add", {"sku": "t ea", "qty": 1}),
        ("cart.add", {"sku": "tea", "qty": 1, "attrs": {"k": 1.5}}),
        ("cart.add", {"sku": "tea", "qty": 1, "attrs": {f"k{i}": i for i in range(17)}}),
        ("cart.remove", {}),
    ],
)
async def test_bad_args_are_rejected_before_any_script(
    device: Devices, kind: str, args: dict[str, Any]
) -> None:
    a = device("a")
    outcome = await a.send(a.op(kind, **args))
    assert (outcome.ok, outcome.code, outcome.dup, outcome.event) == (False, "bad_args", False, None)
    assert await a.lines() == {}
    assert (await a.add("tea", 1)).ok  # the rejected op is settled: the next seq follows it


async def test_unknown_op_kind_is_rejected_and_settled(device: Devices, store: RedisStore) -> None:
    a = device("a")
    outcome = await a.send(a.op("cart.explode"))
    assert (outcome.ok, outcome.code) == (False, "unknown_op")
    assert await store.last_seq("a") == 1
