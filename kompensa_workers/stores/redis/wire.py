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
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from .scripts import source

_hiredis_pack: Callable[[tuple[bytes, ...]], bytes] | None
try:  # the C packer when hiredis is installed (extra "fast")
    import hiredis

    _hiredis_pack = hiredis.pack_command  # type: ignore[assignment]
except ImportError:  # pragma: no cover - depends on the environment
    _hiredis_pack = None

__all__ = ["ScriptCaller", "pack", "pack_resp"]

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


class ScriptCaller:
    """Calls the named Lua scripts of ``scripts.py`` on ``client``'s server.

    Thread-safe: each call takes a connection of its own from this caller's idle
    list (or from the client's pool when the list is empty) and puts it back; so it
    holds at most as many connections as calls ever ran at once. A forked child
    starts with none. A connection that saw any error is closed (redis-py
    reconnects it on the next call); a flushed script cache is reloaded once.
    """

    def __init__(self, client: redis.Redis, names: Sequence[str]) -> None:
        self.client = client
        self._sources = {name: source(name) for name in names}
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest().encode()
            for name, text in self._sources.items()
        }
        self._idle: list[tuple[Any, float]] = []
        self._forks = _forks

    def __call__(self, name: str, keys: Sequence[Word], args: Sequence[Word]) -> Any:
        words = [b"EVALSHA", self._shas[name], b"%d" % len(keys)]
        words += [w.encode() if type(w) is str else _word(w) for w in keys]
        words += [
            w if type(w) is bytes else w.encode() if type(w) is str else _word(w) for w in args
        ]
        if self.client.connection is not None:  # a single-connection client: its path
            try:
                return self.client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", *words[1:]
                )
            except redis.exceptions.NoScriptError:
                self.client.script_load(self._sources[name])
                return self.client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", *words[1:]
                )
        packed = (pack(words),)
        connection = self._take()
        try:
            try:
                return self._send(connection, packed)
            except redis.exceptions.NoScriptError:
                self._send(connection, (pack([b"SCRIPT", b"LOAD",
                                              self._sources[name].encode()]),))
                return self._send(connection, packed)
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self._idle.append((connection, time.monotonic()))

    @staticmethod
    def _send(connection: Any, packed: tuple[bytes]) -> Any:
        connection.send_packed_command(packed)
        return connection.read_response()

    def _take(self) -> Any:
        if self._forks != _forks:  # the parent's sockets are not this process's
            self._idle, self._forks = [], _forks
        try:
            connection, used = self._idle.pop()
        except IndexError:
            return self.client.connection_pool.get_connection()
        if time.monotonic() - used > IDLE_CHECK:
            try:
                stale = connection.can_read()  # data or EOF left on an idle socket
            except redis.ConnectionError:
                stale = True
            if stale:
                connection.disconnect()
        return connection
