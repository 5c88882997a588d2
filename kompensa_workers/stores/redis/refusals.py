"""What a Redis error means: an outage to wait out, a refusal to report at once.

=================  ====================================================  ===========
kind               errors                                                the store
=================  ====================================================  ===========
refused            AUTH failures (WRONGPASS, NOAUTH), NOPERM, TLS        raises
                   failures, an unknown command (renamed, a proxy)       StoreMisconfigured
transient          connection errors, timeouts, OOM, BUSY, LOADING, …,   waits, then
                   a write fewer replicas acknowledged than              StoreUnavailable
                   ``wait_replicas`` (NotReplicated)
cluster            MOVED, ASK, CROSSSLOT on a plain client: the server   raises, naming
                   is a Cluster node                                     the Cluster client
corrupt            a script met data it did not write (WRONGTYPE, …)     SerializationError
=================  ====================================================  ===========

A TLS mismatch does not always say so: ``rediss://`` to a plain server times out in
the handshake, and a plain client to a TLS-only server sees its connection reset.
Both look like outages, so on those two errors the server is asked once, on a
separate socket, which protocol it speaks.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator

import redis
from redis.cluster import RedisCluster

from ...errors import StoreMisconfigured
from .wire import NotReplicated

__all__ = ["TRANSIENT", "address", "classify", "refusal"]

# Errors worth waiting out: the server restarts, loads its data, or fails over.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
             NotReplicated)

# Redis error replies: the server is busy or degraded and may recover...
_TRANSIENT_ERRORS = (
    redis.exceptions.OutOfMemoryError, redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
_TRANSIENT_REPLIES = ("OOM", "MISCONF", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                      "NOREPLICAS", "LOADING", "command not allowed when used memory")
# ...the keys are not where a standalone server would have them (redis-py drops
# the MOVED / ASK code from the text of the exceptions it makes of them)...
_CLUSTER_ERRORS = (redis.exceptions.AskError, redis.exceptions.ClusterCrossSlotError)
_CLUSTER_REPLIES = ("CROSSSLOT", "MOVED", "ASK", "Keys in request don't hash",
                    "all keys must map to the same key slot")
# ...or what is stored is not what our scripts wrote (a Lua runtime error on data).
_CORRUPT_REPLIES = ("WRONGTYPE", "not an integer", "attempt to ", "bad argument")

_AUTH_CODES = ("WRONGPASS", "NOAUTH")
_UNKNOWN = re.compile(r"unknown command ['`]([^'`]*)['`]", re.IGNORECASE)
_UNKNOWN_SUB = re.compile(r"unknown subcommand ['`]([^'`]*)['`]\. Try (\S+) HELP", re.IGNORECASE)
_PROBE_TIMEOUT = 1.0


def classify(exc: redis.ResponseError) -> str:
    """``transient``, ``cluster``, ``corrupt`` or ``other`` for an error reply that
    :func:`refusal` did not claim."""
    text = str(exc)
    if isinstance(exc, _TRANSIENT_ERRORS) or any(m in text for m in _TRANSIENT_REPLIES):
        return "transient"
    if isinstance(exc, _CLUSTER_ERRORS) or any(m in text for m in _CLUSTER_REPLIES):
        return "cluster"
    if any(marker in text for marker in _CORRUPT_REPLIES):
        return "corrupt"
    return "other"


def address(client: redis.Redis | RedisCluster) -> str:
    """``host:port`` (or the socket path) of ``client``'s server, for messages."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        return f"cluster node {node.name}" if node is not None else "the journal's Redis Cluster"
    options = client.get_connection_kwargs()
    if options.get("path"):
        return str(options["path"])
    if options.get("host"):
        return f"{options['host']}:{options.get('port', 6379)}"
    return "the journal's Redis"


def refusal(
    exc: BaseException, client: redis.Redis | RedisCluster
) -> StoreMisconfigured | None:
    """The configuration mistake ``exc`` shows (to raise at once), or None when it
    may be an outage or is some other error."""
    where = f"server {address(client)}"
    text = str(exc)
    code = getattr(exc, "status_code", None) or text.split(" ", 1)[0]
    if isinstance(exc, (redis.AuthenticationError,
                        redis.exceptions.AuthenticationWrongNumberOfArgsError)) or (
        isinstance(exc, redis.ResponseError) and code in _AUTH_CODES
    ):
        shown = f"{code}: {text}" if code in _AUTH_CODES else text
        return StoreMisconfigured(
            f"authentication failed ({shown}): check the password (and user name) in "
            "the URL, or the client's password=/username=", where,
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or code == "NOPERM":
        return StoreMisconfigured(
            f"permission denied (NOPERM: {text}): the client's Redis user needs the "
            "commands the journal runs (EVALSHA, EVAL, SCRIPT LOAD, HGETALL, SCAN) on "
            "the store's keys; grant them with ACL SETUSER", where,
        )
    if isinstance(exc, redis.ResponseError):
        command = _unknown_command(text)
        if command is None:
            return None
        return StoreMisconfigured(
            f"the server does not know command {command} (renamed with rename-command, "
            "or a proxy lacking it): the journal needs EVALSHA, EVAL and SCRIPT LOAD, and "
            "its scripts run HGET, HSET, ZADD and the like", where,
        )
    if isinstance(exc, redis.exceptions.AuthorizationError):  # an OCSP check refused
        return StoreMisconfigured(f"TLS certificate refused ({text})", where)
    tls = next((e for e in _chain(exc) if isinstance(e, ssl.SSLError)), None)
    if tls is not None and not isinstance(tls, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return StoreMisconfigured(
            f"TLS handshake failed ({tls}): check the rediss:// URL, the CA certificates "
            "(ssl_ca_certs) and the client certificate the server expects", where,
        )
    return _protocol_mismatch(exc, client, where)


def _unknown_command(text: str) -> str | None:
    if "Unknown Redis command called from script" in text:
        return "(one a journal script calls)"
    sub = _UNKNOWN_SUB.search(text)
    if sub is not None:
        return f"{sub.group(2).upper()} {sub.group(1).upper()}"
    match = _UNKNOWN.search(text)
    return None if match is None else match.group(1).upper()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _protocol_mismatch(
    exc: BaseException, client: redis.Redis | RedisCluster, where: str
) -> StoreMisconfigured | None:
    """A TLS client timed out in a handshake with a plain server, or a plain client
    was cut off by a TLS-only one: ask the server which it speaks."""
    if isinstance(client, RedisCluster):
        return None  # its nodes' errors already say which node; not probed
    options = client.get_connection_kwargs()
    host, port = options.get("host"), options.get("port")
    if not isinstance(host, str) or not isinstance(port, int) or options.get("path"):
        return None
    uses_tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    timeout = min(_PROBE_TIMEOUT, options.get("socket_connect_timeout") or _PROBE_TIMEOUT)
    if uses_tls and isinstance(exc, redis.TimeoutError):
        handshake = any("handshake" in str(e) for e in _chain(exc))
        if handshake and _speaks(host, port, timeout) == "resp":
            return StoreMisconfigured(
                "TLS handshake failed: the server answers plain Redis, not TLS; use a "
                "redis:// URL (no ssl=True), or enable TLS on the server", where,
            )
        return None
    reset = any(isinstance(e, ConnectionResetError) for e in _chain(exc)) or (
        "Connection closed by server" in str(exc)
    )
    if not uses_tls and isinstance(exc, redis.ConnectionError) and reset \
            and _speaks(host, port, timeout) == "tls":
        return StoreMisconfigured(
            "the server speaks TLS only and cut off a plain connection; use a rediss:// "
            "URL (or ssl=True)", where,
        )
    return None


def _speaks(host: str, port: int, timeout: float) -> str | None:
    """``resp`` when a plain PING gets a Redis reply, ``tls`` when only a TLS
    handshake does; None when neither does (the server is down, or slow)."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(1)[:1] in (b"+", b"-"):
                return "resp"
    except OSError:
        pass  # reset or closed: not a plain Redis; try TLS below
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only the protocol is asked, not trust
    try:
        with socket.create_connection((host, port), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return "tls"
    except ssl.SSLError as exc:
        # An alert from the server (a client certificate required, say) is TLS too.
        return "tls" if "ALERT" in (exc.reason or "") else None
    except OSError:
        return None
