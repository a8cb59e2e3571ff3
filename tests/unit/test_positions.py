import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.errors import InvalidToken
from toolkit.positions import ConsistencyToken, Position, TopicPartition, is_valid_topic_name

topics = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True).filter(
    lambda t: t not in (".", "..")
)
offsets = st.dictionaries(
    st.tuples(topics, st.integers(0, 2**31 - 1)).map(lambda t: TopicPartition(*t)),
    st.integers(0, 2**63 - 1),
    max_size=20,
)


def test_position_is_applied_only_when_committed_offset_is_past_it() -> None:
    position = Position("orders", 2, 41)
    assert not position.is_applied_by(None)
    assert not position.is_applied_by(41)  # committed = next to read: 41 not read yet
    assert position.is_applied_by(42)


def test_position_rejects_negative_coordinates() -> None:
    with pytest.raises(ValueError):
        Position("orders", -1, 0)
    with pytest.raises(ValueError):
        Position("orders", 0, -5)


def test_token_keeps_highest_offset_per_partition() -> None:
    token = ConsistencyToken.of(
        [Position("orders", 0, 5), Position("orders", 0, 3), Position("orders", 1, 7)]
    )
    assert dict(token) == {TopicPartition("orders", 0): 5, TopicPartition("orders", 1): 7}


def test_merge_is_max_per_partition() -> None:
    a = ConsistencyToken({TopicPartition("a", 0): 5, TopicPartition("b", 1): 1})
    b = ConsistencyToken({TopicPartition("a", 0): 2, TopicPartition("c", 0): 9})
    assert dict(a.merge(b)) == {
        TopicPartition("a", 0): 5,
        TopicPartition("b", 1): 1,
        TopicPartition("c", 0): 9,
    }


def test_covers_and_applied_by() -> None:
    token = ConsistencyToken.of([Position("orders", 0, 10), Position("orders", 1, 3)])
    assert token.covers(Position("orders", 0, 10))
    assert token.covers(Position("orders", 0, 2))
    assert not token.covers(Position("orders", 0, 11))
    assert not token.covers(Position("orders", 2, 0))
    committed = {TopicPartition("orders", 0): 11, TopicPartition("orders", 1): 3}
    assert not token.is_applied_by(committed)
    assert token.behind(committed) == {TopicPartition("orders", 1): 1}
    committed[TopicPartition("orders", 1)] = 4
    assert token.is_applied_by(committed)


def test_behind_counts_from_zero_when_nothing_is_committed() -> None:
    token = ConsistencyToken.of([Position("orders", 0, 9)])
    assert token.behind({}) == {TopicPartition("orders", 0): 10}


@given(offsets)
def test_string_form_round_trips(raw: dict[TopicPartition, int]) -> None:
    token = ConsistencyToken(raw)
    text = token.to_string()
    assert ConsistencyToken.parse(text) == token
    assert all(c.isalnum() or c in "-_" for c in text)


@given(offsets, offsets)
def test_merge_is_commutative_and_idempotent(
    a: dict[TopicPartition, int], b: dict[TopicPartition, int]
) -> None:
    x, y = ConsistencyToken(a), ConsistencyToken(b)
    assert x.merge(y) == y.merge(x)
    assert x.merge(x) == x


def test_string_form_is_short() -> None:
    token = ConsistencyToken({TopicPartition("orders", p): 1_000_000 + p for p in range(12)})
    # 12 partitions at offsets around a million: well under a typical header line.
    assert len(token.to_string()) < 80


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2AAAA",  # unknown version
        "1!!!",  # not base64url
        "1A",  # impossible base64 length
        "1BW9yZGVy",  # truncated: topic name without partitions
        "1" + "A" * 9000,  # too long
        "1BW9yZGVyAQAA_w",  # trailing garbage / truncated varint
    ],
)
def test_parse_rejects_bad_input(text: str) -> None:
    with pytest.raises(InvalidToken):
        ConsistencyToken.parse(text)


def test_parse_rejects_invalid_topic_name() -> None:
    # Hand-encode a group whose topic holds a character Kafka forbids.
    import base64

    raw = bytes([3]) + b"a/b" + bytes([1, 0, 0])
    text = "1" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="topic"):
        ConsistencyToken.parse(text)


def _encoded(topic: bytes) -> str:
    """A token naming ``topic``, partition 0 at offset 0, encoded by hand."""
    import base64

    size = len(topic)  # a one- or two-byte varint
    length = bytes([size]) if size < 128 else bytes([size & 0x7F | 0x80, size >> 7])
    raw = length + topic + bytes([1, 0, 0])
    return "1" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "topic",
    [b"t\n", b"t\r", b".", b"..", b"a b", b"t\x00", b"x" * 250, b"\n"],
    ids=["trailing-newline", "cr", "dot", "dotdot", "space", "nul", "250-chars", "newline"],
)
def test_parse_rejects_topic_names_kafka_forbids(topic: bytes) -> None:
    with pytest.raises(InvalidToken, match=r"invalid Kafka topic name.*1-249 characters"):
        ConsistencyToken.parse(_encoded(topic))
    with pytest.raises(InvalidToken):
        ConsistencyToken({TopicPartition(topic.decode(), 0): 1})


@pytest.mark.parametrize("topic", ["...", "a..b", ".hidden", "x" * 249, "A-Z_0.9"])
def test_parse_accepts_every_topic_name_kafka_accepts(topic: str) -> None:
    assert is_valid_topic_name(topic)
    assert ConsistencyToken.parse(_encoded(topic.encode())) == ConsistencyToken(
        {TopicPartition(topic, 0): 0}
    )
    token = ConsistencyToken({TopicPartition(topic, 3): 7})
    assert ConsistencyToken.parse(token.to_string()) == token


def test_invalid_topic_error_shows_a_bounded_name() -> None:
    with pytest.raises(InvalidToken) as caught:
        ConsistencyToken({TopicPartition("y" * 249 + "!", 0): 1})
    assert len(str(caught.value)) < 300


def test_parse_rejects_repeated_partition() -> None:
    import base64

    raw = bytes([1]) + b"a" + bytes([2, 0, 5, 0, 6])
    text = "1" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="repeats"):
        ConsistencyToken.parse(text)


def test_invalid_token_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ConsistencyToken.parse("nope")
