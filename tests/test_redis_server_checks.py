"""The RedisStore server check and which Redis errors are refusals, not outages.

Settings are judged as pure data; the check itself runs on fakeredis (which models
neither CONFIG nor INFO) and on a private redis-server (counted with INFO
commandstats). End-to-end scenarios live in integrations/test_redis_config_errors.py.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

import fakeredis
import pytest
import redis
from redis._parsers.base import BaseParser

from integrations.servers import RedisServer, free_port
from kompensa_workers import RedisStore, StoreMisconfigured, StoreUnavailable
from kompensa_workers.stores.redis.refusals import classify, refusal
from kompensa_workers.stores.redis.server import Settings, assess

CLOSED = redis.Redis(host="127.0.0.1", port=free_port())  # nothing listens there


def reply(text: str) -> redis.RedisError:
    """The exception redis-py makes of the error reply ``text``."""
    error: redis.RedisError = BaseParser.parse_error(text)
    return error


# -- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (Settings("noeviction", "yes", "", "CONFIG GET"), []),
        (Settings("allkeys-lru", "yes", "", "CONFIG GET"), [("maxmemory-policy", True)]),
        (Settings("allkeys-random", "yes", "", "CONFIG GET"), [("maxmemory-policy", True)]),
        (Settings("volatile-ttl", "yes", "", "CONFIG GET"), [("maxmemory-policy", False)]),
        (Settings("noeviction", "no", "", "CONFIG GET"), [("persistence", False)]),
        (Settings("noeviction", "no", "3600 1", "CONFIG GET"), []),
        (Settings("allkeys-lfu", "no", "", "CONFIG GET"),
         [("maxmemory-policy", True), ("persistence", False)]),
        # INFO shows AOF but not the save rules: persistence is not judged on a guess
        (Settings("noeviction", "no", None, "INFO"), []),
        (Settings(None, None, None, "CONFIG GET"), []),
    ],
)
def test_settings_under_which_journals_can_be_lost(
    settings: Settings, expected: list[tuple[str, bool]]
) -> None:
    assert [(f.setting, f.fatal) for f in assess(settings)] == expected


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("WRONGPASS invalid username-password pair or user is disabled.",
         "authentication failed (WRONGPASS"),
        ("NOAUTH Authentication required.", "authentication failed (NOAUTH"),
        ("ERR invalid password", "authentication failed"),
        ("ERR wrong number of arguments for 'auth' command", "authentication failed"),
        ("NOPERM this user has no permissions to run the 'evalsha' command",
         "permission denied"),
        ("ERR unknown command 'EVALSHA', with args beginning with: 'ab' '0' ",
         "does not know command EVALSHA"),
        ("ERR unknown command `evalsha`, with args beginning with: ",
         "does not know command EVALSHA"),
        ("ERR unknown subcommand 'LOAD'. Try SCRIPT HELP.", "does not know command SCRIPT LOAD"),
        ("ERR Unknown Redis command called from script script: 92, on @user_script:1.",
         "does not know command (one a journal script calls)"),
    ],
)
def test_configuration_replies_are_refusals_that_name_the_cause(text: str, named: str) -> None:
    refused = refusal(reply(text), CLOSED)
    assert isinstance(refused, StoreMisconfigured)
    assert named in str(refused)
    assert refused.detail == f"server 127.0.0.1:{CLOSED.get_connection_kwargs()['port']}"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        # redis-py's Script reloads a flushed script itself: not a refusal
        ("NOSCRIPT No matching script. Please use EVAL.", "other"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "transient"),
        ("BUSY Redis is busy running a script.", "transient"),
        ("MOVED 3999 127.0.0.1:6381", "cluster"),
        ("ASK 3999 127.0.0.1:6381", "cluster"),
        ("CROSSSLOT Keys in request don't hash to the same slot", "cluster"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", "corrupt"),
        ("ERR Error running script: @user_script:9: user_script:9: attempt to compare "
         "nil with number", "corrupt"),
    ],
)
def test_other_replies_keep_their_classification(text: str, kind: str) -> None:
    error = reply(text)
    assert refusal(error, CLOSED) is None
    assert isinstance(error, redis.ResponseError)
    assert classify(error) == kind


def wrapped(cause: BaseException) -> redis.ConnectionError:
    """A redis-py connection error raised from ``cause``, as redis-py raises it."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting: {exc}") from exc
    except redis.ConnectionError as error:
        return error


def test_a_certificate_failure_is_a_tls_refusal() -> None:
    error = wrapped(ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed"
    ))
    refused = refusal(error, CLOSED)
    assert refused is not None and "TLS handshake failed" in str(refused)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused)


@pytest.mark.parametrize(
    "error",
    [
        wrapped(ConnectionRefusedError(111, "Connection refused")),
        wrapped(ConnectionResetError(104, "Connection reset by peer")),  # nothing listens
        wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        redis.TimeoutError("Timeout reading from socket"),
        reply("LOADING Redis is loading the dataset in memory"),
        redis.exceptions.MaxClientsReachedError("max number of clients reached"),
    ],
    ids=["refused", "reset", "tls-eof", "timeout", "loading", "maxclients"],
)
def test_outages_are_not_refusals(error: redis.RedisError) -> None:
    assert refusal(error, CLOSED) is None


def test_a_tls_clients_read_timeout_is_an_outage() -> None:
    # Only a timeout in the TLS handshake makes the store ask the server which
    # protocol it speaks; a read timeout on a TLS connection is waited out.
    tls = redis.Redis(host="127.0.0.1", port=free_port(), ssl=True)
    assert refusal(redis.TimeoutError("Timeout reading from socket"), tls) is None


# -- the check -----------------------------------------------------------------------


def test_the_constructor_does_no_io_and_an_outage_at_first_use_is_waited_out() -> None:
    # nothing listens there: no error yet
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", write_timeout=0.1)
    with pytest.raises(StoreUnavailable):
        store.get("k")


def test_strict_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="strict must be a bool"):
        RedisStore(CLOSED, strict="no")  # type: ignore[arg-type]


def test_a_server_that_answers_neither_config_nor_info_is_used_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisStore(fakeredis.FakeStrictRedis(), namespace="unchecked")
    with caplog.at_level(logging.DEBUG, logger="kompensa_workers"):
        for _ in range(3):
            assert store.get("k") is None
    messages = [r.getMessage() for r in caplog.records if r.name == "kompensa_workers"]
    assert [m for m in messages if "were not checked" in m] == [messages[0]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def server() -> Any:
    started = RedisServer()  # appendonly no, save "": no persistence
    yield started.start()
    started.stop()


def config_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats").get("cmdstat_config|get", {})
    return int(stats.get("calls", 0))


def test_the_check_runs_once_per_store_and_warns_once_across_threads(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = server.client()
    store = RedisStore(client, namespace="once")
    assert config_calls(server) == 0  # lazily: nothing at construction
    with caplog.at_level(logging.WARNING, logger="kompensa_workers"):
        threads = [threading.Thread(target=store.get, args=(f"k{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.get("again")
        checked = config_calls(server)
        RedisStore(client, namespace="once").get("k")  # another store checks for itself
    warnings = [r.getMessage() for r in caplog.records if "persistence" in r.getMessage()]
    assert checked == 3  # one pipelined round trip: maxmemory-policy, appendonly, save
    assert config_calls(server) == 6
    assert len(warnings) == 2
    assert 'appendonly no, save ""' in warnings[0] and "JournalLost" in warnings[0]
