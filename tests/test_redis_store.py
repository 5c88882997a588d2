"""RedisStore specifics on fakeredis (Lua through lupa): key names, corrupt records,
connection errors, idempotent retries, the recovery index."""

from __future__ import annotations

import threading
import time
from typing import Any

import fakeredis
import msgpack
import pytest

from kompensa_workers import (
    LeaseLost,
    RedisStore,
    SagaRunner,
    SerializationError,
    StoreUnavailable,
    deliver,
)
from kompensa_workers.stores.protocol import JournalWrite
from kompensa_workers.stores.redis.keys import journal_key


def fake() -> tuple[fakeredis.FakeServer, fakeredis.FakeStrictRedis]:
    server = fakeredis.FakeServer()
    return server, fakeredis.FakeStrictRedis(server=server)


def claim(store: RedisStore, key: str, token: str | None = None) -> Any:
    return store.claim(key, saga="s", fingerprint="fp", lease_token=token,
                       lock_ttl=store.lock_ttl, at=time.time())


def test_keys_that_collide_when_naively_joined_stay_distinct() -> None:
    _, client = fake()
    left = RedisStore(client, namespace="a:b")
    right = RedisStore(client, namespace="a")
    assert journal_key("a:b", "c") != journal_key("a", "b:c")
    assert SagaRunner(left).run(lambda s: s.step("x", lambda: "left"),
                                idempotency_key="c") == "left"
    assert SagaRunner(right).run(lambda s: s.step("x", lambda: "right"),
                                 idempotency_key="b:c") == "right"
    # Braces in keys cannot break out of the hash tag or alias another key.
    assert journal_key("n", "x{y}") != journal_key("n", "x%7By%7D")
    assert journal_key("n", "x{y}").count("{") == 1  # the partition's hash tag only
    with pytest.raises(ValueError, match="braces"):
        RedisStore(client, namespace="bad{ns}")


def test_a_decoding_client_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(fakeredis.FakeStrictRedis(decode_responses=True))


def test_journal_values_are_msgpack_never_pickle() -> None:
    _, client = fake()
    store = RedisStore(client, namespace="ns")
    SagaRunner(store).run(lambda s: s.step("x", lambda: {"a": 1}), idempotency_key="k")
    raw = client.hget(journal_key("ns", "k"), "step:x")
    assert raw is not None and not raw.startswith(b"\x80")  # no pickle protocol header
    record = msgpack.unpackb(raw, strict_map_key=False)
    assert record[0] == {"a": 1}  # a positional record: the result comes first


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", b"exploded"), ("step:x", b"\xc1not msgpack"), ("fence", b"NaN"),
     (b"\xff\xfe", b"a field name that is not UTF-8")],
)
def test_corrupt_records_are_reported_never_started_afresh(
    field: str | bytes, value: bytes
) -> None:
    _, client = fake()
    store = RedisStore(client, namespace="ns")
    SagaRunner(store).run(lambda s: s.step("x", lambda: 1), idempotency_key="k")
    client.hset(journal_key("ns", "k"), field, value)
    with pytest.raises(SerializationError, match="'k'.*(corrupt|refusing)"):
        store.get("k")
    with pytest.raises(SerializationError):
        deliver(lambda s: s.step("x", lambda: 2), key="k", store=store)
    assert client.hget(journal_key("ns", "k"), field) == value  # left as found


def test_a_key_of_the_wrong_type_is_reported() -> None:
    _, client = fake()
    client.set(journal_key("ns", "k"), b"someone else's")
    with pytest.raises(SerializationError, match="corrupt or not ours"):
        claim(RedisStore(client, namespace="ns"), "k")


def test_connection_errors_are_retried_until_the_server_is_back() -> None:
    server, client = fake()
    store = RedisStore(client, namespace="ns", write_timeout=5.0)
    granted = claim(store, "k")
    server.connected = False
    threading.Timer(0.3, lambda: setattr(server, "connected", True)).start()
    started = time.monotonic()
    store.commit("k", granted.lease, JournalWrite.build(time.time(), status="waiting"))
    assert time.monotonic() - started >= 0.25
    assert store.get("k").status == "waiting"  # type: ignore[union-attr]


def test_a_server_that_stays_away_ends_the_delivery_and_it_resumes_later() -> None:
    server, client = fake()
    store = RedisStore(client, namespace="ns", lock_ttl=1.0, write_timeout=0.3)
    runs: list[str] = []

    def b() -> None:
        runs.append("b")
        if len(runs) == 2:
            server.connected = False  # Redis goes away once 'a' is journaled

    def saga(s: Any) -> str:
        s.step("a", lambda: runs.append("a"))
        s.step("b", b)  # its intent's write carries 'a'
        return "done"

    with pytest.raises(StoreUnavailable, match="unreachable"):
        deliver(saga, key="k", store=store)
    server.connected = True
    time.sleep(1.05)  # the dead delivery's lease runs out
    assert SagaRunner(store).run(saga, idempotency_key="k") == "done"
    assert runs == ["a", "b", "b"]  # 'a' journaled before the outage never re-ran


def test_a_retried_write_that_had_landed_is_acknowledged_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, client = fake()
    store = RedisStore(client, namespace="ns")
    granted = claim(store, "k")
    finish = JournalWrite.build(time.time(), status="succeeded", result=b"\xc0")
    # A retried call sends the same write id (the arguments are built once).
    monkeypatch.setattr("kompensa_workers.stores.redis.store._write_id", lambda: "write-1")
    assert store.commit("k", granted.lease, finish) is False
    # The reply was lost; the client sends the same write again after the lease
    # was already released by the first one: acknowledged, not refused.
    assert store.commit("k", granted.lease, finish) is False
    assert store.get("k").status == "succeeded"  # type: ignore[union-attr]
    other = JournalWrite.build(time.time(), status="succeeded", result=b"\xc0")
    monkeypatch.setattr("kompensa_workers.stores.redis.store._write_id", lambda: "write-2")
    with pytest.raises(LeaseLost):  # a different write after the release is refused
        store.commit("k", granted.lease, other)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "transient"),
        ("MISCONF Redis is configured to save RDB snapshots", "transient"),
        ("BUSY Redis is busy running a script", "transient"),
        ("CROSSSLOT Keys in request don't hash to the same slot", "cluster"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", "corrupt"),
        ("ERR user_script:12: attempt to perform arithmetic on a nil value", "corrupt"),
        ("ERR unknown command 'FOO'", "other"),
        ("command not allowed when used memory > 'maxmemory'. script: 89c5, on "
         "@user_script:35.", "transient"),
    ],
)
def test_redis_error_replies_are_told_apart(reply: str, kind: str) -> None:
    import redis

    from kompensa_workers.stores.redis.refusals import classify as _classify

    assert _classify(redis.ResponseError(reply)) == kind


def test_redlock_refuses_clients_that_could_hang_forever() -> None:
    import redis

    from kompensa_workers import Redlock

    with pytest.raises(ValueError, match="socket_timeout"):
        Redlock([redis.Redis(socket_timeout=None)])


def test_get_many_reads_in_bulk_and_reports_a_corrupt_record_in_place() -> None:
    import fakeredis

    from kompensa_workers import RedisStore, SagaRunner, SerializationError

    client = fakeredis.FakeRedis()
    store = RedisStore(client, namespace="bulk")
    runner = SagaRunner(store)
    for n in range(3):
        runner.run(lambda saga: saga.step("a", lambda: 1), idempotency_key=f"k{n}")
    client.hset(journal_key("bulk", "k1"), "status", "exploded")
    found = store.get_many(["k0", "k1", "k2", "nope"])
    assert [getattr(e, "status", None) for e in found] == ["succeeded", None, "succeeded", None]
    assert isinstance(found[1], SerializationError) and found[3] is None
