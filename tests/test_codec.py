from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompensa_workers import SerializationError
from kompensa_workers._core.codec import decode, encode, fingerprint

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.decimals(allow_nan=False) | st.uuids() | st.datetimes()
    | st.dates() | st.times() | st.timedeltas()
    | st.datetimes(timezones=st.sampled_from([ZoneInfo("Europe/Paris"), dt.timezone.utc]))
)
hashable = st.none() | st.booleans() | st.integers() | st.text() | st.binary()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(hashable, inner, max_size=4)
    | st.frozensets(hashable, max_size=4)
    | st.sets(hashable, max_size=4),
    max_leaves=12,
)


# Given any supported value, when it is encoded and decoded, then it comes back
# equal and of the same types (tuples stay tuples, zones stay zones).
@given(values)
def test_round_trip_keeps_value_and_types(value: object) -> None:
    back = decode(encode(value))
    assert back == value
    assert_same_types(back, value)


def assert_same_types(back: object, value: object) -> None:
    assert type(back) is type(value)
    if isinstance(value, dict):
        assert isinstance(back, dict)
        for key, item in value.items():
            assert_same_types(back[key], item)
    elif isinstance(value, (list, tuple)):
        assert isinstance(back, (list, tuple))
        for got, item in zip(back, value, strict=True):
            assert_same_types(got, item)
    elif isinstance(value, (set, frozenset)):
        assert sorted(map(repr, back)) == sorted(map(repr, value))  # type: ignore[call-overload]
    elif isinstance(value, (dt.datetime, dt.time)):
        assert isinstance(back, (dt.datetime, dt.time))
        assert (back.tzinfo, back.fold) == (value.tzinfo, value.fold)


def test_zone_names_survive() -> None:
    moment = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris"))
    back = decode(encode(moment))
    assert back.tzinfo == ZoneInfo("Europe/Paris")
    assert back.utcoffset() == moment.utcoffset()


def test_big_integers_round_trip() -> None:
    for number in (2**64, -(2**63) - 1, 10**40):
        assert decode(encode(number)) == number


class Money:
    pass


# Given a value with an unsupported part, when it is encoded, then the error names
# the step, the path inside the value and the type.
def test_unencodable_value_names_step_path_and_type() -> None:
    with pytest.raises(SerializationError) as info:
        encode({"items": [1, Money()]}, step="charge", what="result")
    assert info.value.step == "charge"
    assert info.value.type_name == "tests.test_codec.Money"
    assert "step 'charge'" in str(info.value)
    assert "result['items'][1]" in str(info.value)


@pytest.mark.parametrize("value", [object(), {"k": {1, Money()}}, (1, [Money()])])
def test_unsupported_values_are_refused_not_pickled(value: object) -> None:
    with pytest.raises(SerializationError, match="cannot be journaled"):
        encode(value)


def test_subclasses_are_refused_rather_than_silently_changed() -> None:
    from collections import OrderedDict

    with pytest.raises(SerializationError, match="OrderedDict"):
        encode(OrderedDict(a=1))


def test_corrupt_bytes_give_a_clear_error() -> None:
    with pytest.raises(SerializationError, match="corrupt"):
        decode(b"\xc1garbage")


def test_fingerprint_ignores_dict_and_set_order_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": {2, 3}}) == fingerprint({"b": {3, 2}, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint([1, 2]) != fingerprint((1, 2))


def test_supported_extension_types_round_trip() -> None:
    value = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        "day": dt.date(2024, 1, 2),
        "at": dt.time(1, 2, 3, tzinfo=dt.timezone.utc),
        "span": dt.timedelta(days=-1, seconds=5),
        "price": Decimal("19.90"),
        "id": uuid.UUID(int=7),
        "raw": b"\x00\xff",
    }
    assert decode(encode(value)) == value
