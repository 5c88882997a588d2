"""Redis key names: one execution's keys share a hash tag (one Cluster slot).

``{namespace}:{<key>}:journal``. The namespace may not contain braces and the key
has ``%``, ``{`` and ``}`` percent-encoded, so the mapping from (namespace, key) to a
Redis key is one-to-one: ``("a:b", "c")`` and ``("a", "b:c")`` never meet.
"""

from __future__ import annotations

import functools

__all__ = ["index_key", "journal_key", "journal_key_name", "validate_namespace"]


def validate_namespace(namespace: str) -> str:
    """Refuse namespaces that would make key names ambiguous."""
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
    if "{" in namespace or "}" in namespace:
        raise ValueError(f"namespace may not contain braces, got {namespace!r}")
    return namespace


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def journal_key_name(escaped: str) -> str:
    """The execution key inside a journal key's braces (inverse of the escaping)."""
    return escaped.replace("%7B", "{").replace("%7D", "}").replace("%25", "%")


@functools.lru_cache(maxsize=4096)  # each delivery asks for it once per write
def journal_key(namespace: str, key: str) -> str:
    """The hash holding one execution's journal and lease."""
    return f"{namespace}:{{{_escape(key)}}}:journal"


def lock_key(namespace: str, key: str) -> str:
    """The Redlock resource of one execution (on each lock master)."""
    return f"{namespace}:{{{_escape(key)}}}:lock"


def recovered_key(namespace: str) -> str:
    """The hash counting re-dispatches of each execution since its last claim."""
    return f"{namespace}:recovered"


def index_key(namespace: str) -> str:
    """The zset of non-terminal executions by lease deadline (for recovery)."""
    return f"{namespace}:index"
