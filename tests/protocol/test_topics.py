import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.topics import TopicKind, TopicName, is_valid_key, parse_topic


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cart:m42", TopicName(TopicKind.CART, "m42")),
        ("points:wx.o6_abc-1", TopicName(TopicKind.POINTS, "wx.o6_abc-1")),
        ("stock:SKU-1", TopicName(TopicKind.STOCK, "SKU-1")),
        ("store:sh-01", TopicName(TopicKind.STORE, "sh-01")),
        ("member:a@b", TopicName(TopicKind.MEMBER, "a@b")),
        ("catalog", TopicName(TopicKind.CATALOG)),
    ],
)
def test_valid_topics_parse_and_print_back(name: str, expected: TopicName) -> None:
    assert parse_topic(name) == expected
    assert str(expected) == name


@pytest.mark.parametrize(
    "name",
    ["carts:m1", "cart", "cart:", "cart:a:b", "cart:{m1}", "stock:" + "x" * 65, "catalog:x", "", ":x"],
)
def test_invalid_topics_are_unknown_topic(name: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_topic(name)
    assert err.value.code is ErrorCode.UNKNOWN_TOPIC
    assert err.value.close_code is None  # answered with an err frame, the connection stays


def test_keys_exclude_hash_tag_and_separator_characters() -> None:
    assert is_valid_key("m-1.x_y@z")
    assert not is_valid_key("m{1}")
    assert not is_valid_key("a:b")
    assert not is_valid_key("a b")
