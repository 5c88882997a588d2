"""Redis key names: one execution's keys and its share of the recovery index share
a hash tag, so every script touches one Redis Cluster slot.

A namespace is split into :data:`PARTITIONS` partitions; an execution key belongs
to partition ``crc32(key) % PARTITIONS``. Each partition has a hash tag whose slot
lies in its own 1/PARTITIONS of the slot space (``p<n>.<i>``: the first ``i`` that
lands there), so a Cluster that splits the slots into even ranges, as
``redis-cli --cluster create`` does, gets an even share of the partitions, and of
the executions, on every master.

====================================  =============================================
key                                   what it holds
====================================  =============================================
``<ns>:{p<n>.<i>}:<key>:journal``     one execution's journal and lease (hash)
``<ns>:{p<n>.<i>}:index``             the partition's executions not yet ended, by
                                      lease deadline (zset; recovery reads it)
``<ns>:{p<n>.<i>}:recovered``         re-dispatches since each one's last claim
``<ns>:{<key>}:lock``                 the Redlock resource (on the lock masters)
====================================  =============================================

The namespace may not contain braces and the key has ``%``, ``{`` and ``}``
percent-encoded, so the mapping from (namespace, key) to a Redis key is one-to-one:
``("a:b", "c")`` and ``("a", "b:c")`` never meet. Layout 0.1 (``<ns>:{<key>}:journal``
and one ``<ns>:index``) is :func:`legacy_index_key`'s business only.
"""

from __future__ import annotations

import binascii
import functools
import zlib

__all__ = [
    "PARTITIONS",
    "index_key",
    "journal_key",
    "journal_key_name",
    "legacy_index_key",
    "partition_keys",
    "validate_namespace",
]

PARTITIONS = 128
SLOTS = 16384


def validate_namespace(namespace: str) -> str:
    """Refuse namespaces that would make key names ambiguous."""
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
    if "{" in namespace or "}" in namespace:
        raise ValueError(f"namespace may not contain braces, got {namespace!r}")
    return namespace


@functools.cache
def tags() -> tuple[str, ...]:
    """The hash tag of each partition (computed once: a few ms)."""
    width = SLOTS // PARTITIONS
    found = []
    for partition in range(PARTITIONS):
        attempt = 0
        while True:
            tag = f"p{partition}.{attempt}"
            if binascii.crc_hqx(tag.encode(), 0) % SLOTS // width == partition:
                found.append(tag)
                break
            attempt += 1
    return tuple(found)


def partition_of(key: str) -> int:
    """The partition an execution key belongs to."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % PARTITIONS


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def journal_key_name(escaped: str) -> str:
    """The execution key in a journal key (inverse of the escaping)."""
    return escaped.replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


@functools.lru_cache(maxsize=4096)  # each delivery asks for it once per write
def journal_key(namespace: str, key: str) -> str:
    """The hash holding one execution's journal and lease."""
    return f"{namespace}:{{{tags()[partition_of(key)]}}}:{_escape(key)}:journal"


def execution_of(namespace: str, name: str) -> str | None:
    """The execution key of journal key ``name`` of ``namespace`` (None if it is
    not one)."""
    prefix = f"{namespace}:{{"
    if not name.startswith(prefix) or not name.endswith(":journal"):
        return None
    close = name.find("}:", len(prefix))
    if close < 0:
        return None
    return journal_key_name(name[close + 2:-len(":journal")])


def lock_key(namespace: str, key: str) -> str:
    """The Redlock resource of one execution (on each lock master)."""
    return f"{namespace}:{{{_escape(key)}}}:lock"


def index_key(namespace: str, key: str) -> str:
    """The recovery index (zset of non-terminal executions by lease deadline) of
    ``key``'s partition."""
    return partition_keys(namespace)[partition_of(key)][0]


def recovered_key(namespace: str, key: str) -> str:
    """The hash counting re-dispatches since the last claim, of ``key``'s partition."""
    return partition_keys(namespace)[partition_of(key)][1]


@functools.lru_cache(maxsize=64)
def partition_keys(namespace: str) -> tuple[tuple[str, str], ...]:
    """(index, recovered) of every partition, in partition order."""
    return tuple(
        (f"{namespace}:{{{tag}}}:index", f"{namespace}:{{{tag}}}:recovered")
        for tag in tags()
    )


@functools.lru_cache(maxsize=64)
def timer_keys(namespace: str) -> tuple[tuple[str, str], ...]:
    """(timers, their messages) of every partition, in partition order: messages
    kept to be sent again later, for a broker without delayed delivery."""
    return tuple(
        (f"{namespace}:{{{tag}}}:timers", f"{namespace}:{{{tag}}}:timed") for tag in tags()
    )


def legacy_index_key(namespace: str) -> str:
    """The one recovery index of key layout 0.1 (checked at start: executions
    still in it must be drained by a 0.1 worker first)."""
    return f"{namespace}:index"
