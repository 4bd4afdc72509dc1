"""The store's argument validation (:mod:`protocol.ops`) agrees with the reference's (:mod:`protocol.cart`).

The store validates in Python before any script runs, so a difference would make the hub and the SDK's local
prediction disagree on which ops are ``bad_args``. The only intended difference: member ids and SKUs must
also be safe inside Redis keys and topic names (:data:`protocol.topics.KEY_PATTERN`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cart, ops
from protocol.errors import OpRejected
from protocol.topics import is_valid_key

keys = st.sampled_from(["tea", "m1", "A.b-c@d_e", "x" * 64]) | st.text(max_size=70)
ints = st.sampled_from([0, 1, 2, 999, 1000, 9999, 10000, -1, 2**53 - 1, 2**53, -(2**53)]) | st.integers()
values: st.SearchStrategy[Any] = st.one_of(
    ints, st.booleans(), st.none(), st.floats(allow_nan=False), st.text(max_size=300), st.lists(st.integers())
)
attrs: st.SearchStrategy[Any] = st.one_of(
    st.dictionaries(st.text(max_size=70), values, max_size=18),
    st.dictionaries(
        st.sampled_from(["size", "gift", "n"]), st.text(max_size=3) | st.integers(-3, 3), max_size=3
    ),
    values,
)
args = st.fixed_dictionaries(
    {"member": keys},
    optional={"sku": keys | values, "qty": ints | values, "attrs": attrs},
)
kinds = st.sampled_from(["cart.add", "cart.set", "cart.remove", "cart.clear"])


def accepted_by_store(kind: str, a: dict[str, Any]) -> bool:
    try:
        ops.parse_args(kind, a)
    except OpRejected as exc:
        code = exc.code
    else:
        return True
    assert code == "bad_args"
    return False


def accepted_by_reference(kind: str, a: dict[str, Any]) -> bool:
    try:
        cart.parse_op(kind, a, client_id="c", seq=1)
    except cart.CartArgsError:
        return False
    return True


@given(kind=kinds, a=args)
def test_store_accepts_exactly_what_the_reference_accepts_for_valid_keys(
    kind: str, a: dict[str, Any]
) -> None:
    store_ok, reference_ok = accepted_by_store(kind, a), accepted_by_reference(kind, a)
    if store_ok:
        assert reference_ok
    keys_valid = is_valid_key(a["member"]) and (
        kind == "cart.clear" or (isinstance(a.get("sku"), str) and is_valid_key(a["sku"]))
    )
    if keys_valid:
        assert store_ok == reference_ok, (kind, a)


def test_unknown_kind_is_unknown_op() -> None:
    with pytest.raises(OpRejected) as caught:
        ops.parse_args("cart.explode", {"member": "m1"})
    assert caught.value.code == "unknown_op"


def test_key_with_a_trailing_newline_is_refused() -> None:
    assert not accepted_by_store("cart.clear", {"member": "m1\n"})
