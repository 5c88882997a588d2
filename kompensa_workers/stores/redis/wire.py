"""The store's script calls: one packed ``EVALSHA`` on a connection kept for them.

redis-py's command path (``Script.__call__`` -> ``execute_command``) costs more CPU
than the round trip it makes: argument encoding one by one, the pool's bookkeeping
and readiness poll, retry and telemetry wrappers, for every call. A journal write
is a fixed command whose arguments the store already holds as bytes, and the store
retries outages itself, so its calls take a short path instead: the command packed
in one go, sent on a connection this caller keeps (taken from the client's own pool,
so its settings, TLS, Sentinel and credentials apply), the reply read by redis-py's
parser. Replies and errors are redis-py's: a script error is the same
``ResponseError`` it raises, a broken connection the same ``ConnectionError``.

On a Redis Cluster (``redis.cluster.RedisCluster``) a call goes to the connection
pool of the master that holds its first key's slot, as the client's slot map says.
A MOVED reply (a slot moved, a failover) refreshes that map and the call is sent
again (it did not run); an ASK reply (a slot being migrated) sends it to the node
named, after ASKING. A broken connection to a node also refreshes the map.

With ``wait_replicas`` N, every write is followed by ``WAIT N timeout`` on the same
connection, in the same round trip; fewer acknowledgements than N raise
:class:`NotReplicated`, which the store treats as an outage (the write may be lost
by a failover, so nothing may rely on it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from .scripts import source

_hiredis_pack: Callable[[tuple[bytes, ...]], bytes] | None
try:  # the C packer when hiredis is installed (extra "fast")
    import hiredis

    _hiredis_pack = hiredis.pack_command  # type: ignore[assignment]
except ImportError:  # pragma: no cover - depends on the environment
    _hiredis_pack = None

logger = logging.getLogger("kompensa_workers")

__all__ = ["NotReplicated", "ScriptCaller", "pack", "pack_resp"]

Word = bytes | str | int

# A connection idle this long is checked before use (a server restart or its idle
# timeout may have closed it): one poll, instead of one on every call.
IDLE_CHECK = 1.0


def _word(value: Word) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a Redis command word must be bytes, str or int, got {value!r}")


def pack(words: Sequence[bytes]) -> bytes:
    """``words`` in the Redis protocol (RESP): one array of bulk strings."""
    if _hiredis_pack is not None:
        return _hiredis_pack(tuple(words))
    return pack_resp(words)


def pack_resp(words: Sequence[bytes]) -> bytes:
    """:func:`pack` in Python, for when hiredis is not installed."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        parts.append(b"$%d\r\n%b\r\n" % (len(word), word))
    return b"".join(parts)


# How many forks made this process (0 in the one that imported this first): a
# caller made before the last fork drops the connections it holds.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)

# Scripts that only read: no WAIT after them.
READ_ONLY = frozenset({"due"})
# A Cluster's slot map is refreshed at most this often (s), however many calls
# meet MOVED or a broken node at once.
REFRESH_EVERY = 0.1
# How many times one call follows MOVED / ASK before its error is raised (the
# store then waits it out like an outage).
REDIRECTS = 5

Call = tuple[str, Sequence[Word], Sequence[Word]]


class NotReplicated(redis.RedisError):
    """A write was not acknowledged by ``wait_replicas`` replicas in time."""


class ScriptCaller:
    """Calls the named Lua scripts of ``scripts.py`` on ``client``'s server(s).

    Thread-safe: each call takes a connection of its own from this caller's idle
    list of the pool it needs (or from the pool when the list is empty) and puts it
    back; so it holds at most as many connections as calls ever ran at once. A
    forked child starts with none. A connection that met a connection error is
    closed (redis-py reconnects it on the next call); a flushed script cache is
    reloaded once.
    """

    def __init__(
        self, client: redis.Redis | RedisCluster, names: Sequence[str], *,
        wait_replicas: int = 0, wait_timeout: float = 0.1,
    ) -> None:
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._sources = {name: source(name) for name in names}
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest().encode()
            for name, text in self._sources.items()
        }
        self.wait_replicas = wait_replicas
        self._wait = (pack([b"WAIT", b"%d" % wait_replicas,
                            b"%d" % max(1, round(wait_timeout * 1000))])
                      if wait_replicas else b"")
        self._wait_text = f"WAIT {wait_replicas} {max(1, round(wait_timeout * 1000))}"
        self._idle: dict[Any, list[tuple[Any, float]]] = {}
        # One server's pool, no WAIT, not a single-connection client.
        self._lean = (not self._cluster and not wait_replicas
                      and client.connection is None)  # type: ignore[union-attr]
        self._forks = _forks
        self._refresh_lock = threading.Lock()
        self._refreshed = 0.0

    def __call__(self, name: str, keys: Sequence[Word], args: Sequence[Word]) -> Any:
        words = [b"EVALSHA", self._shas[name], b"%d" % len(keys)]
        words += [w.encode() if type(w) is str else _word(w) for w in keys]
        words += [
            w if type(w) is bytes else w.encode() if type(w) is str else _word(w) for w in args
        ]
        route = keys[0] if keys else None
        if not self._lean:
            if not self._cluster and self.client.connection is not None:  # type: ignore[union-attr]
                return self._single(name, words)
            packed = pack(words)
            return self._redirected(name, route, packed, self._exchange(
                self._pool(route), [packed], name not in READ_ONLY)[0])
        # The usual case, written out: one server, no WAIT, one command.
        packed = pack(words)
        pool = self.client.connection_pool  # type: ignore[union-attr]
        connection = self._take(pool)
        try:
            connection.send_packed_command((packed,))
            reply = connection.read_response()
        except redis.ResponseError as exc:  # the connection is still in step
            return self._redirected(name, route, packed, exc)
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self._idle.setdefault(pool, []).append((connection, time.monotonic()))
        return reply

    def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply, in order: the calls bound for one server go in one
        round trip (on a Cluster, one per master). An error reply is raised (the
        first one); a redirected call is sent again on its own."""
        packed = [pack(self._words(*call)) for call in calls]
        groups: dict[Any, list[int]] = {}
        for at, (_, keys, _args) in enumerate(calls):
            groups.setdefault(self._pool(keys[0] if keys else None), []).append(at)
        replies: list[Any] = [None] * len(calls)
        for pool, members in groups.items():
            durable = any(calls[at][0] not in READ_ONLY for at in members)
            got = self._exchange(pool, [packed[at] for at in members], durable)
            for at, reply in zip(members, got, strict=True):
                name, keys, _ = calls[at]
                replies[at] = self._redirected(
                    name, keys[0] if keys else None, packed[at], reply)
        return replies

    # -- plumbing ----------------------------------------------------------------

    def _words(self, name: str, keys: Sequence[Word], args: Sequence[Word]) -> list[bytes]:
        words = [b"EVALSHA", self._shas[name], b"%d" % len(keys)]
        words += [w.encode() if type(w) is str else _word(w) for w in keys]
        words += [
            w if type(w) is bytes else w.encode() if type(w) is str else _word(w) for w in args
        ]
        return words

    def _single(self, name: str, words: list[bytes]) -> Any:
        """A single-connection client: its own command path."""
        client: Any = self.client
        try:
            reply = client.execute_command("EVALSHA", *words[1:])
        except redis.exceptions.NoScriptError:
            client.script_load(self._sources[name])
            reply = client.execute_command("EVALSHA", *words[1:])
        if self._wait and name not in READ_ONLY:
            self._check_wait(client.execute_command("WAIT", *self._wait_text.split()[1:]))
        return reply

    def _redirected(self, name: str, route: Word | None, packed: bytes, reply: Any) -> Any:
        """``reply``, or the reply of the call sent again where its error says: the
        script loaded (NOSCRIPT), the slot map refreshed (MOVED), the node named
        after ASKING (ASK)."""
        durable = name not in READ_ONLY
        for _ in range(REDIRECTS):
            if not isinstance(reply, Exception):
                return reply
            if isinstance(reply, redis.exceptions.NoScriptError):
                load = pack([b"SCRIPT", b"LOAD", self._sources[name].encode()])
                reply = self._exchange(self._pool(route), [load, packed], durable)[1]
            elif isinstance(reply, redis.exceptions.AskError) and self._cluster:
                pool = self._node_pool(reply.host, reply.port)
                load = pack([b"SCRIPT", b"LOAD", self._sources[name].encode()])
                reply = self._exchange(pool, [load, pack([b"ASKING"]), packed], durable)[2]
            elif isinstance(reply, redis.exceptions.MovedError) and self._cluster:
                self._refresh(force=True)
                reply = self._exchange(self._pool(route), [packed], durable)[0]
            else:
                break
        raise reply

    def _exchange(self, pool: Any, commands: list[bytes], durable: bool) -> list[Any]:
        """Send ``commands`` (and the WAIT, when the caller waits and ``durable``)
        on one connection of ``pool`` in one write; their replies, an error reply
        as its exception (not raised)."""
        wait = durable and self.wait_replicas > 0
        connection = self._take(pool)
        replies: list[Any] = []
        try:
            # One buffer, so one send: the server reads the lot at once.
            connection.send_packed_command(
                (b"".join([*commands, self._wait] if wait else commands),))
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:  # the connection is still in step
                    replies.append(exc)
            acked: Any = None
            if wait:
                try:
                    acked = connection.read_response()
                except redis.ResponseError as exc:  # a demoted master refuses WAIT
                    acked = exc
        except BaseException as exc:
            connection.disconnect()
            if self._cluster and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self._refresh()
            raise
        finally:
            self._idle.setdefault(pool, []).append((connection, time.monotonic()))
        if wait and not all(isinstance(reply, Exception) for reply in replies):
            self._check_wait(acked)  # something was written: it must be replicated
        return replies

    def _check_wait(self, acked: Any) -> None:
        if isinstance(acked, Exception):
            raise NotReplicated(f"{self._wait_text} failed ({acked}); the write may not "
                                "survive a failover")
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"{self._wait_text}: {int(acked)} of {self.wait_replicas} replicas "
                "acknowledged the write in time; it may not survive a failover"
            )

    def _pool(self, route: Word | None) -> Any:
        if not self._cluster:
            return self.client.connection_pool  # type: ignore[union-attr]
        client: Any = self.client
        if route is None:
            node = client.get_default_node()
        else:
            name = route if type(route) is bytes else _word(route)
            node = client.nodes_manager.get_node_from_slot(key_slot(name))
        return client.get_redis_connection(node).connection_pool

    def _node_pool(self, host: str, port: int) -> Any:
        client: Any = self.client
        node = client.get_node(host=host, port=port)
        if node is None:  # a node the map does not know yet
            self._refresh(force=True)
            node = client.get_node(host=host, port=port)
            if node is None:
                raise redis.ConnectionError(f"cluster node {host}:{port} is not known")
        return client.get_redis_connection(node).connection_pool

    def _refresh(self, *, force: bool = False) -> None:
        """Read the Cluster's slot map again (at most every REFRESH_EVERY s unless
        ``force``: a MOVED reply means ours is out of date)."""
        with self._refresh_lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_EVERY:
                return
            try:
                self.client.nodes_manager.initialize()  # type: ignore[union-attr]
            except redis.RedisError as exc:  # no node answers yet: a later call tries
                logger.debug("refreshing the cluster's slot map failed: %s", exc)
            self._refreshed = time.monotonic()

    def _take(self, pool: Any) -> Any:
        if self._forks != _forks:  # the parent's sockets are not this process's
            self._idle, self._forks = {}, _forks
        try:
            connection, used = self._idle[pool].pop()
        except (KeyError, IndexError):
            return pool.get_connection()
        if time.monotonic() - used > IDLE_CHECK:
            try:
                stale = connection.can_read()  # data or EOF left on an idle socket
            except redis.ConnectionError:
                stale = True
            if stale:
                connection.disconnect()
        return connection
