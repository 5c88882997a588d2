"""A Redis that would lose journals, or refuses the client, is named at once.

Real redis-server processes with the settings named: an eviction policy, no
persistence, a password, renamed commands, TLS. A configuration mistake raises
StoreMisconfigured on the first call (nothing written, nothing run); it is never
retried for ``write_timeout`` and reported as an outage.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kompensa_workers import (
    RedisStore,
    Redlock,
    Saga,
    SagaRunner,
    StoreMisconfigured,
    StoreUnavailable,
)

from .servers import CI, RedisServer, free_port

WARNINGS = "kompensa_workers"


def one_step(ran: list[str]) -> Any:
    def saga(s: Saga) -> int:
        return int(s.step("charge", lambda: ran.append("charge") or 1))

    return saga


@pytest.fixture
def server_with(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``server_with(*args, **options)``: a started private redis-server."""
    started: list[RedisServer] = []

    def start(*args: str, **options: Any) -> RedisServer:
        server = RedisServer(args=args, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def journal_keys(server: RedisServer) -> list[bytes]:
    return list(server.client().scan_iter(match="cfg:*"))


def connections(server: RedisServer, client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == WARNINGS and r.levelno == logging.WARNING and text in r.getMessage()]


# -- settings under which journals can be lost ------------------------------------


def test_allkeys_eviction_refuses_the_first_claim_and_writes_nothing(server_with: Any) -> None:
    # Given a Redis that may evict any key under memory pressure
    server = server_with("--maxmemory-policy", "allkeys-lru")
    store = RedisStore.from_url(server.url, namespace="cfg")
    ran: list[str] = []
    # When a saga is first run against it
    with pytest.raises(StoreMisconfigured) as caught:
        SagaRunner(store).run(one_step(ran), idempotency_key="k")
    # Then the error names the setting, its value, why and the fix; nothing ran or
    # was written
    text = str(caught.value)
    assert "maxmemory-policy is allkeys-lru" in text
    assert "run again" in text and "noeviction" in text and "strict=False" in text
    assert ran == [] and journal_keys(server) == []


def test_allkeys_with_strict_false_runs_and_warns_once(
    server_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_with("--maxmemory-policy", "allkeys-lfu")
    store = RedisStore.from_url(server.url, namespace="cfg", strict=False)
    ran: list[str] = []
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        assert SagaRunner(store).run(one_step(ran), idempotency_key="a") == 1
        assert SagaRunner(store).run(one_step(ran), idempotency_key="b") == 1
    assert ran == ["charge", "charge"]
    assert len(warnings_about(caplog, "maxmemory-policy is allkeys-lfu")) == 1


def test_an_eviction_policy_fixed_while_refused_is_accepted_without_a_restart(
    server_with: Any,
) -> None:
    server = server_with("--maxmemory-policy", "allkeys-random")
    store = RedisStore.from_url(server.url, namespace="cfg")
    with pytest.raises(StoreMisconfigured, match="allkeys-random"):
        store.get("k")
    with pytest.raises(StoreMisconfigured, match="allkeys-random"):
        store.get("k")  # still refused: asked again, not remembered as passed
    server.client().config_set("maxmemory-policy", "noeviction")
    assert SagaRunner(store).run(one_step([]), idempotency_key="k") == 1


def test_volatile_eviction_runs_with_a_warning(
    server_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_with("--maxmemory-policy", "volatile-lru", appendonly=True)
    store = RedisStore.from_url(server.url, namespace="cfg")
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        assert SagaRunner(store).run(one_step([]), idempotency_key="k") == 1
    [warning] = warnings_about(caplog, "maxmemory-policy is volatile-lru")
    assert "retention" in warning
    assert warnings_about(caplog, "persistence") == []


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        ({}, True),  # appendonly no, save ""
        ({"appendonly": True}, False),
        ({"args": ("--save", "3600 1")}, False),  # RDB snapshots
    ],
    ids=["none", "appendonly", "rdb-save-rules"],
)
def test_no_persistence_is_a_warning(
    server_with: Any, caplog: pytest.LogCaptureFixture, options: dict[str, Any], warned: bool
) -> None:
    server = server_with(*options.pop("args", ()), **options)
    store = RedisStore.from_url(server.url, namespace="cfg")
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        assert SagaRunner(store).run(one_step([]), idempotency_key="k") == 1
        store.get("k")
    found = warnings_about(caplog, "persistence")
    assert len(found) == (1 if warned else 0)
    if warned:
        assert "JournalLost" in found[0] and "appendonly yes" in found[0]


def test_with_config_renamed_the_policy_is_read_from_info(
    server_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a managed-style Redis with CONFIG renamed away
    server = server_with("--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", "")
    with pytest.raises(StoreMisconfigured, match="maxmemory-policy is allkeys-lru"):
        RedisStore.from_url(server.url, namespace="cfg").get("k")
    # and with strict=False: runs; INFO does not show the save rules, so no
    # persistence warning is given on a guess
    store = RedisStore.from_url(server.url, namespace="cfg", strict=False)
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        assert SagaRunner(store).run(one_step([]), idempotency_key="k") == 1
    assert len(warnings_about(caplog, "allkeys-lru")) == 1
    assert warnings_about(caplog, "persistence") == []


# -- refusals: not outages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "code"), [(":wrong@", "WRONGPASS"), ("", "NOAUTH")], ids=["wrong", "none"]
)
def test_a_wrong_or_missing_password_fails_at_once(
    server_with: Any, report: list[str], userinfo: str, code: str
) -> None:
    server = server_with("--requirepass", "secret", password="secret")
    watcher = server.client()
    before = connections(server, watcher)
    store = RedisStore.from_url(
        f"redis://{userinfo}127.0.0.1:{server.port}/0", namespace="cfg", write_timeout=15.0
    )
    ran: list[str] = []
    started = time.monotonic()
    with pytest.raises(StoreMisconfigured) as caught:
        SagaRunner(store).run(one_step(ran), idempotency_key="k")
    elapsed = time.monotonic() - started
    report.append(f"password {code}: StoreMisconfigured after {elapsed * 1000:.1f} ms")
    text = str(caught.value)
    assert "authentication failed" in text and code in text and "password" in text
    # One connection attempt, not write_timeout's worth of retries
    assert connections(server, watcher) - before <= 2
    assert elapsed < store.write_timeout
    assert ran == [] and journal_keys(server) == []


def test_a_server_without_the_script_commands_is_named(server_with: Any) -> None:
    server = server_with(
        "--rename-command", "EVALSHA", "", "--rename-command", "EVAL", "", appendonly=True
    )
    store = RedisStore.from_url(server.url, namespace="cfg", write_timeout=15.0)
    ran: list[str] = []
    with pytest.raises(StoreMisconfigured, match="does not know command EVALSHA"):
        SagaRunner(store).run(one_step(ran), idempotency_key="k")
    assert ran == [] and journal_keys(server) == []


def test_rediss_to_a_plain_server_is_named_tls(server_with: Any, report: list[str]) -> None:
    server = server_with(appendonly=True)
    # A TLS handshake with a plain server gets no answer: one connect timeout, then
    # the server is asked which protocol it speaks.
    store = RedisStore.from_url(
        f"rediss://127.0.0.1:{server.port}/0", namespace="cfg", socket_timeout=0.5,
        write_timeout=15.0,
    )
    started = time.monotonic()
    with pytest.raises(StoreMisconfigured, match="TLS handshake failed.*plain Redis"):
        store.get("k")
    report.append(f"rediss:// to a plain server: StoreMisconfigured after "
                  f"{time.monotonic() - started:.2f} s (socket timeout 0.5 s)")


def test_an_outage_is_still_waited_out() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", namespace="cfg",
                                write_timeout=0.3)
    with pytest.raises(StoreUnavailable):
        store.get("k")


# -- TLS servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[str, str]]:
    """A self-signed certificate and its key (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if CI:
            pytest.fail("openssl is not installed; CI=true makes a missing tool a failure")
        pytest.skip("openssl is not installed")
    directory = Path(tempfile.mkdtemp(prefix="kw-tls-"))
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    yield str(cert), str(key)
    shutil.rmtree(directory, ignore_errors=True)


def test_a_plain_client_to_a_tls_only_server_is_told_to_use_rediss(
    server_with: Any, certificate: tuple[str, str]
) -> None:
    server = server_with(tls=certificate, appendonly=True)
    store = RedisStore.from_url(f"redis://127.0.0.1:{server.port}/0", namespace="cfg",
                                write_timeout=15.0)
    with pytest.raises(StoreMisconfigured, match="speaks TLS only.*rediss://"):
        store.get("k")


def test_an_untrusted_certificate_is_named(
    server_with: Any, certificate: tuple[str, str]
) -> None:
    server = server_with(tls=certificate, appendonly=True)
    store = RedisStore.from_url(f"rediss://127.0.0.1:{server.port}/0", namespace="cfg",
                                write_timeout=15.0)
    with pytest.raises(StoreMisconfigured, match="TLS handshake failed.*CERTIFICATE_VERIFY"):
        store.get("k")
    trusting = RedisStore.from_url(
        f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certificate[0]}", namespace="cfg"
    )
    assert SagaRunner(trusting).run(one_step([]), idempotency_key="k") == 1


# -- Redlock masters -----------------------------------------------------------------


def test_redlock_masters_that_refuse_the_client(
    server_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    journal = server_with(appendonly=True)
    good = [server_with(appendonly=True) for _ in range(2)]
    locked = server_with("--requirepass", "secret", password="secret")
    wrong = f"redis://:wrong@127.0.0.1:{locked.port}/0"
    # One master of three refusing: the lock still works, and the refusal is logged once
    lock = Redlock.from_urls([*(s.url for s in good), wrong])
    store = RedisStore.from_url(journal.url, namespace="cfg", lock=lock)
    with caplog.at_level(logging.WARNING, logger=WARNINGS):
        for key in ("a", "b"):
            assert SagaRunner(store).run(one_step([]), idempotency_key=key) == 1
    [logged] = warnings_about(caplog, "refuses this client")
    assert f"127.0.0.1:{locked.port}" in logged and "authentication failed" in logged
    # The only master refusing: no majority is possible, so it is named at once
    alone = RedisStore.from_url(journal.url, namespace="cfg",
                                lock=Redlock.from_urls([wrong]))
    with pytest.raises(StoreMisconfigured, match="authentication failed"):
        SagaRunner(alone).run(one_step([]), idempotency_key="c")
