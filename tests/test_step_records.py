"""Step records on the wire: compact, read back whole, and 0.1.0's form still read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompensa_workers import SerializationError
from kompensa_workers._core.codec import decode, encode
from kompensa_workers._core.failures import ErrorInfo
from kompensa_workers._core.journal import Journal
from kompensa_workers._core.records import CompensationRecord, Execution, StepRecord
from kompensa_workers.retry import Retry
from kompensa_workers.stores.protocol import STEP_PREFIX, JournalWrite, execution_from_fields

from .test_codec import values

LISTPACK_VALUE = 64  # Redis's default hash-max-listpack-value
NOW = 1_750_000_000.123456

optional_time = st.none() | st.floats(min_value=0, max_value=4e9)
errors = st.builds(
    ErrorInfo, st.text(max_size=20), st.text(max_size=40),
    st.none() | st.lists(st.integers() | st.text(max_size=5), max_size=2).map(tuple),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.text(max_size=40),
)
compensations = st.builds(
    CompensationRecord, st.sampled_from(["retrying", "compensated", "failed"]),
    st.integers(0, 1000), st.none() | errors, optional_time, optional_time,
)
records = st.builds(
    StepRecord,
    name=st.text(min_size=1, max_size=20),
    position=st.integers(0, 10_000),
    status=st.sampled_from(["retrying", "succeeded", "failed"]),
    attempts=st.integers(0, 1000),
    parent=st.none() | st.text(max_size=10),
    index=st.integers(0, 300),
    result=values,
    error=st.none() | errors,
    started_at=optional_time,
    finished_at=optional_time,
    retry_at=optional_time,
    completed_seq=st.none() | st.integers(0, 2**40),
    has_compensation=st.booleans(),
    compensation=st.none() | compensations,
    delays=st.lists(st.floats(0, 1e6), max_size=4).map(tuple),
)


def succeeded_noop() -> StepRecord:
    return StepRecord(
        name="reserve", position=3, status="succeeded", attempts=1, result="A-12345678",
        started_at=NOW, finished_at=NOW + 0.0042, completed_seq=4, has_compensation=True,
    )


def journal() -> Journal:
    return Journal(Execution(key="k", saga="shop.checkout", status="running",
                             fingerprint="f"))


def test_a_succeeded_step_fits_a_redis_listpack_value() -> None:
    # Given a succeeded step with a 10-byte result, two timestamps, its completion
    # sequence and a compensation
    # When it is encoded
    # Then it fits in 64 bytes, so a small journal hash stays a listpack
    assert len(succeeded_noop().to_bytes()) <= LISTPACK_VALUE


@given(records)
def test_every_field_comes_back(record: StepRecord) -> None:
    # Given any record, when it is written and read back under its name
    back = StepRecord.from_bytes(record.to_bytes(), record.name)
    # Then every field is equal (tuples, sets and zones keep their types)
    assert back == record
    assert type(back.result) is type(record.result)


@given(records, values)
def test_a_result_given_encoded_is_written_as_given(record: StepRecord, result: Any) -> None:
    # Given a record built from a result already encoded (how a step's success is)
    made = record.succeeded(result, encode(result), 2, NOW - 1, NOW, 7)
    # Then it reads back as the record built by hand with the decoded result,
    # and so does the same record with a compensation
    expected = replace(
        record, result=decode(encode(result)), status="succeeded", attempts=2, error=None,
        retry_at=None, started_at=record.started_at or NOW - 1, finished_at=NOW,
        completed_seq=7,
    )
    assert type(made.result) is type(expected.result)
    assert StepRecord.from_bytes(made.to_bytes(), record.name) == expected == made
    comp = CompensationRecord("compensated", 1, finished_at=NOW)
    undone = made.with_compensation(comp)
    assert StepRecord.from_bytes(undone.to_bytes(), record.name) == replace(
        expected, compensation=comp)


def test_the_result_journaled_is_the_one_the_step_returned() -> None:
    # Given a step's success recorded, and the result the saga goes on with
    record, result = journal().succeeded(
        StepRecord("reserve", 0, "retrying", 0, has_compensation=True), 1,
        {"items": [1, 2]}, started_at=NOW, now=NOW + 1, max_bytes=1 << 20,
    )
    # When the saga changes that value before the write is sent
    result["items"].append(3)
    write = JournalWrite.build(NOW, record)
    # Then the journal holds what the step returned: what a later delivery replays
    stored = StepRecord.from_bytes(write.steps[STEP_PREFIX + "reserve"], "reserve")
    assert stored.result == {"items": [1, 2]}
    # and a compensation written later does not pick the change up either
    undone = journal().compensated(record, 1, NOW + 2)
    assert StepRecord.from_bytes(undone.to_bytes(), "reserve").result == {"items": [1, 2]}


def test_the_result_replayed_in_this_delivery_is_the_journaled_one() -> None:
    # Given a step returning a tuple, a set and a list
    _, result = journal().succeeded(
        StepRecord("reserve", 0, "retrying", 0), 1, ((1, 2), {3}, [4]),
        started_at=NOW, now=NOW, max_bytes=1 << 20,
    )
    # Then the saga goes on with the value a later delivery would replay
    assert result == ((1, 2), {3}, [4]) and type(result) is tuple


def test_a_result_that_cannot_be_journaled_names_the_step_and_type() -> None:
    class Receipt:
        pass

    with pytest.raises(SerializationError, match="Receipt") as error:
        journal().succeeded(StepRecord("charge", 0, "retrying", 0), 1, {"r": Receipt()},
                            started_at=NOW, now=NOW, max_bytes=1 << 20)
    assert error.value.step == "charge"
    assert error.value.type_name is not None and "Receipt" in error.value.type_name


def test_a_result_over_the_store_limit_is_refused_naming_the_step() -> None:
    with pytest.raises(SerializationError, match="max_value_bytes of 100") as error:
        journal().succeeded(StepRecord("charge", 0, "retrying", 0), 1, "x" * 200,
                            started_at=NOW, now=NOW, max_bytes=100)
    assert (error.value.step, error.value.type_name) == ("charge", "str")


def test_failed_and_compensation_records_read_back() -> None:
    # Given a retried failure, then a failed compensation of a succeeded step
    base = StepRecord("charge", 2, "retrying", 0, parent="pay", index=1,
                      has_compensation=True)
    failed, delay = journal().failed(base, 1, ValueError("declined"), Retry(attempts=3),
                                     started_at=NOW, now=NOW + 1)
    done, _ = journal().succeeded(base, 2, 7, started_at=NOW, now=NOW + 2,
                                  max_bytes=1 << 20)
    undo, _ = journal().compensation_failed(done, 1, KeyError("gone"),
                                            Retry(attempts=1), NOW + 3)
    # Then each reads back equal, its error included
    assert delay is not None and failed.error is not None
    for record in (failed, done, undo):
        assert StepRecord.from_bytes(record.to_bytes(), "charge") == record
    assert undo.compensation is not None and undo.compensation.status == "failed"


# Written by release 0.1.0: a map of every field, the name included.
OLD_SUCCEEDED = bytes.fromhex(
    "8fa46e616d65a772657365727665a8706f736974696f6e02a6737461747573a973756363656564"
    "6564a8617474656d70747303a6706172656e74a567726f7570a5696e64657801a6726573756c74"
    "82a26964a3412d31a16e02a56572726f72c0aa737461727465645f6174cb41da13b860200000ab"
    "66696e69736865645f6174cb41da13b860500000a872657472795f6174c0ad636f6d706c657465"
    "645f73657105b06861735f636f6d70656e736174696f6ec3ac636f6d70656e736174696f6e95a6"
    "6661696c65640295b36275696c74696e732e56616c75654572726f72a86e6f2073746f636bc70a"
    "0191a86e6f2073746f636b80ad54726163656261636b202e2e2ec0cb41da13b862400000a66465"
    "6c61797392cb3fe0000000000000cb3ff0000000000000"
)
OLD_RETRYING = bytes.fromhex(
    "8fa46e616d65a6636861726765a8706f736974696f6e00a6737461747573a87265747279696e67"
    "a8617474656d70747301a6706172656e74c0a5696e64657800a6726573756c74c0a56572726f72"
    "95b36275696c74696e732e56616c75654572726f72a86e6f2073746f636bc70a0191a86e6f2073"
    "746f636b80ad54726163656261636b202e2e2eaa737461727465645f6174cb41da13b860200000"
    "ab66696e69736865645f6174c0a872657472795f6174cb41da13b860a00000ad636f6d706c6574"
    "65645f736571c0b06861735f636f6d70656e736174696f6ec2ac636f6d70656e736174696f6ec0"
    "a664656c61797391cb4000000000000000"
)


def test_records_written_by_0_1_are_read() -> None:
    # Given a journal hash holding records in 0.1.0's map form
    execution = execution_from_fields("k", {
        "status": b"compensation_failed", "saga": b"shop.checkout",
        "step:reserve": OLD_SUCCEEDED, "step:charge": OLD_RETRYING,
    })
    # Then every field is read
    stock = ErrorInfo("builtins.ValueError", "no stock", ("no stock",), {}, "Traceback ...")
    assert execution.step("reserve") == StepRecord(
        name="reserve", position=2, status="succeeded", attempts=3, parent="group",
        index=1, result={"id": "A-1", "n": 2}, started_at=1750000000.5,
        finished_at=1750000001.25, completed_seq=5, has_compensation=True,
        compensation=CompensationRecord("failed", 2, stock, None, 1750000009.0),
        delays=(0.5, 1.0),
    )
    assert execution.step("charge") == StepRecord(
        name="charge", position=0, status="retrying", attempts=1, error=stock,
        started_at=1750000000.5, retry_at=1750000002.5, delays=(2.0,),
    )
    # and a record rewritten from one is written in the compact form
    record = execution.step("reserve")
    assert record is not None
    assert StepRecord.from_bytes(record.to_bytes(), "reserve") == record
    assert len(record.to_bytes()) < len(OLD_SUCCEEDED) / 2


def test_a_compact_record_needs_its_name() -> None:
    with pytest.raises(TypeError, match="name"):
        StepRecord.from_bytes(succeeded_noop().to_bytes())


@pytest.mark.parametrize("wire", [[1, 2], [None, 9, 0, 1], [None, 1, 0, 1, *[None] * 11],
                                  [None, 1, 0, 1, None, None, None, True, None, None, [7]]])
def test_a_corrupt_record_is_refused(wire: list[Any]) -> None:
    with pytest.raises(SerializationError, match="corrupt step record"):
        StepRecord.from_bytes(encode(wire), "reserve")


@given(
    st.integers(min_value=0, max_value=100_000), st.booleans(),
    st.none() | st.text(min_size=1, max_size=10), st.integers(min_value=0, max_value=40),
)
def test_an_intent_is_the_record_the_constructor_makes(
    position: int, undoable: bool, parent: str | None, index: int
) -> None:
    """The record of a step before its first attempt is made without __init__ (and
    its wire form by hand below position 128): it equals, encodes and reads back as
    the one the dataclass constructor makes."""
    made = StepRecord.intent("pay", position, undoable, parent, index)
    built = StepRecord(
        name="pay", position=position, status="retrying", attempts=0, has_compensation=undoable,
        parent=parent, index=index if parent is not None else 0,
    )
    assert made == built
    assert made.to_bytes() == encode(decode(built.to_bytes())) == built.to_bytes()
    assert StepRecord.from_bytes(made.to_bytes(), name="pay") == built


@given(records, values, st.floats(min_value=0, max_value=4e9), st.integers(1, 10**6))
def test_a_success_record_is_written_as_the_generic_encoder_writes_it(
    record: StepRecord, result: Any, finished: float, seq: int
) -> None:
    """A success's wire form is made on the spot for the usual shape (no group, no
    delays, no compensation yet): the same bytes the generic encoder makes."""
    made = record.succeeded(result, encode(result), 3, NOW, finished, seq)
    generic = made.with_compensation(made.compensation)  # the same, encoded generically
    assert made.to_bytes() == generic.to_bytes()
