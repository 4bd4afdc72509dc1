import pytest

from protocol.errors import ErrorCode, OpRejected
from protocol.ops import CartAdd, CartClear, parse_args


def test_valid_args_parse_into_their_struct_and_unknown_keys_are_ignored() -> None:
    args = parse_args("cart.add", {"member": "m1", "sku": "A", "qty": 2, "future": True})
    assert args == CartAdd(member="m1", sku="A", qty=2)
    assert parse_args("cart.clear", {"member": "m1"}) == CartClear(member="m1")


@pytest.mark.parametrize(
    ("kind", "args", "code"),
    [
        ("cart.explode", {"member": "m1"}, ErrorCode.UNKNOWN_OP),
        ("cart.add", {"member": "m1", "sku": "A", "qty": "2"}, ErrorCode.BAD_ARGS),  # no coercion
        ("cart.add", {"member": "m1", "sku": "A", "qty": True}, ErrorCode.BAD_ARGS),
        ("cart.add", {"member": "m1", "sku": "A", "qty": 0}, ErrorCode.BAD_ARGS),
        ("cart.set", {"member": "m1\n", "sku": "A", "qty": 1}, ErrorCode.BAD_ARGS),
        ("cart.remove", {"member": "m1"}, ErrorCode.BAD_ARGS),
    ],
)
def test_invalid_args_are_rejected_with_a_code(kind: str, args: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(OpRejected) as err:
        parse_args(kind, args)
    assert err.value.code == code
