"""The floor a journaled saga is measured against: raw Redis writes of about the size
of a journaled step, one round trip each, with nothing of the library around them.

Each write is one ``EVALSHA`` (redis-py's ``Script``, as a user writes a raw script
call; the journal's own calls take a shorter path, see ``stores/redis/wire.py``) of a
script that does ``HSET`` of a 200-byte value and ``PEXPIRE`` on a fresh key.
This module imports nothing of the library, so a benchmark can load it before it
chooses which checkout of the library to import.
"""

from __future__ import annotations

import itertools

import redis

LUA = """
redis.call('HSET', KEYS[1], 'value', ARGV[1])
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
VALUE = b"v" * 200  # about a journaled step record (name, status, times, result)
TTL_MS = 600_000


class RawWrites:
    """``write()`` makes one raw write to a key under ``prefix`` not written before
    (by this object)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._script = client.register_script(LUA)
        self._prefix = prefix
        self._count = itertools.count()

    def write(self) -> None:
        self._script(keys=[f"{self._prefix}:{next(self._count)}"], args=[VALUE, TTL_MS])

    def writes(self, count: int) -> None:
        for _ in range(count):
            self.write()
