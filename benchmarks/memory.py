"""What a journaled execution costs in Redis memory.

Run ``python -m benchmarks.memory`` from the repository root (``--quick`` for a smoke
run). It starts its own ``redis-server`` on a free port (``redis-server`` must be on
the PATH) so that ``used_memory`` moves only with what the benchmark writes.

A 3-step saga with short string results runs to success, so its record stays
until the store's ``retention`` ends. Measured two ways, each for an execution run
in-process by ``SagaRunner`` and for one carrying the dispatch record a broker
adapter journals for recovery (the shape the Dramatiq adapter writes):

* the keys one execution leaves, each with its ``MEMORY USAGE``, and what its
  journal hash holds, field by field;
* the growth of ``used_memory`` over 10,000 executions, per execution, against the
  goal of at most 1 KB (1,024 bytes) per retained execution.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from integrations.servers import RedisServer, redis_servers
from kompensa_workers import Finished, RedisStore, Saga, SagaRunner, deliver
from kompensa_workers.stores.redis.keys import PARTITIONS, index_key, journal_key

from . import _report

EXECUTIONS = 10_000
QUICK_EXECUTIONS = 500
NAMESPACE = "shop"
SAGA_NAME = "shop.checkout"
GOAL_BYTES = 1024  # used_memory growth per retained execution, at most


# -- the saga -------------------------------------------------------------------------


def label(kind: str, order_id: str) -> str:
    """A short string result, such as a reservation or payment reference."""
    return f"{kind}-{order_id}"


def checkout(saga: Saga, order_id: str) -> str:
    """Three steps, each journaling a result of about a dozen bytes."""
    saga.step("reserve", label, "res", order_id)
    saga.step("charge", label, "pay", order_id)
    saga.step("ship", label, "ship", order_id)
    return "done"


Execute = Callable[[str], None]


def in_process(store: RedisStore) -> Execute:
    """Execution ``i`` through ``SagaRunner``: no dispatch record is journaled."""
    runner = SagaRunner(store)

    def execute(order_id: str) -> None:
        runner.run(checkout, order_id, idempotency_key=f"order-{order_id}")

    return execute


def from_a_broker(store: RedisStore) -> Execute:
    """Execution ``i`` delivered as a broker adapter does, with the dispatch record it
    journals for recovery (actor, queue, message id, arguments)."""

    def execute(order_id: str) -> None:
        dispatch = {
            "broker": "dramatiq", "actor": SAGA_NAME, "queue": "default",
            "id": str(uuid.uuid4()), "args": [order_id], "kwargs": {}, "options": {},
        }
        outcome = deliver(
            checkout, (order_id,), {}, key=f"order-{order_id}", store=store,
            dispatch=dispatch, name=SAGA_NAME,
        )
        if not isinstance(outcome, Finished):
            raise RuntimeError(f"execution {order_id} did not finish: {outcome!r}")

    return execute


@dataclass(frozen=True)
class Way:
    """How the executions run, and any server setting changed for them."""

    label: str
    make: Callable[[RedisStore], Execute]
    config: tuple[tuple[str, str], ...] = ()

    def prepare(self, client: redis.Redis) -> None:
        """Empty our private server and apply this way's settings (or the defaults)."""
        for name in client.scan_iter(count=1000):
            client.delete(name)
        settings = dict(DEFAULT_CONFIG)
        settings.update(self.config)
        for name, value in settings.items():
            client.config_set(name, value)


DEFAULT_CONFIG = (("hash-max-listpack-value", "64"),)
WAYS = (
    Way("SagaRunner (in-process)", in_process),
    Way("broker delivery (with dispatch record)", from_a_broker),
    Way("broker delivery, `hash-max-listpack-value 256`", from_a_broker,
        (("hash-max-listpack-value", "256"),)),
)


# -- what one execution leaves --------------------------------------------------------

PURPOSES = {
    "journal": "the execution's record: status, lease, fencing token, step results, "
               "last lease grants; expires `retention` after the end",
    "index": "recovery index (zset of non-terminal executions by lease deadline)",
    "recovered": "re-dispatch counts of executions recovery sent again",
    "lock": "Redlock lease (only with `lock=Redlock(...)`)",
}


@dataclass(frozen=True)
class KeyReport:
    name: str
    kind: str
    encoding: str
    size: int
    ttl_seconds: int
    bytes_used: int

    @property
    def purpose(self) -> str:
        return PURPOSES.get(self.name.rsplit(":", 1)[-1], "unknown")


def describe_keys(client: redis.Redis) -> list[KeyReport]:
    """Every key on the server with its type, element count, TTL and MEMORY USAGE."""
    found = []
    for raw in sorted(client.scan_iter(count=1000)):
        name = _text(raw)
        kind = _text(client.type(raw))
        size = {"hash": client.hlen, "zset": client.zcard}.get(kind, lambda _: 0)(raw)
        found.append(KeyReport(
            name, kind, _text(client.object("encoding", raw)), int(size),
            int(client.ttl(raw)), int(client.memory_usage(raw, samples=0) or 0),
        ))
    return found


def journal_fields(client: redis.Redis, name: str) -> list[tuple[str, int]]:
    """(field, bytes of name + value) of a journal hash, largest first."""
    fields = client.hgetall(name)
    sizes = [(_text(field), len(field) + len(value)) for field, value in fields.items()]
    return sorted(sizes, key=lambda pair: -pair[1])


@dataclass(frozen=True)
class OneExecution:
    way: str
    keys: list[KeyReport]
    fields: list[tuple[str, int]]
    index_while_running: int | None


def one_execution(server: RedisServer, way: Way) -> OneExecution:
    """Run one execution on an empty server and list what it leaves behind; a step
    also notes whether the recovery index held the execution while it ran."""
    client = server.client()
    way.prepare(client)
    store = RedisStore(server.client(), namespace=NAMESPACE)
    seen: list[int] = []

    def peek(saga: Saga, order_id: str) -> str:
        saga.step("peek", lambda: seen.append(
            int(client.zcard(index_key(NAMESPACE, "warm-up")))))
        return checkout(saga, order_id)

    SagaRunner(store).run(peek, "warm-up", idempotency_key="warm-up")  # loads scripts
    client.delete(journal_key(NAMESPACE, "warm-up"))
    way.make(store)("000000")
    keys = describe_keys(client)
    journal = next((k.name for k in keys if k.name.endswith(":journal")), None)
    fields = journal_fields(client, journal) if journal else []
    return OneExecution(way.label, keys, fields, seen[0] if seen else None)


# -- 10,000 executions ----------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    way: str
    executions: int
    used_memory_delta: int
    memory_usage_sum: int
    keys_added: int
    seconds: float


def growth(server: RedisServer, way: Way, executions: int) -> Growth:
    """``used_memory`` before and after ``executions`` executions on an empty server."""
    client = server.client()
    way.prepare(client)
    store = RedisStore(server.client(), namespace=NAMESPACE)
    execute = way.make(store)
    execute("warm-up")  # loads the scripts and connects before the baseline
    client.delete(journal_key(NAMESPACE, "order-warm-up"))
    keys_before = int(client.dbsize())
    before = used_memory(client)
    start = time.monotonic()
    for i in range(executions):
        execute(f"{i:06d}")
    seconds = time.monotonic() - start
    after = used_memory(client)
    return Growth(way.label, executions, after - before, memory_usage_sum(client),
                  int(client.dbsize()) - keys_before, seconds)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_usage_sum(client: redis.Redis) -> int:
    """The MEMORY USAGE of every key, pipelined."""
    names = list(client.scan_iter(count=1000))
    total = 0
    for start in range(0, len(names), 1000):
        with client.pipeline(transaction=False) as pipe:
            for name in names[start:start + 1000]:
                pipe.memory_usage(name, samples=0)
            total += sum(int(n or 0) for n in pipe.execute())
    return total


# -- the report -----------------------------------------------------------------------


def keys_section(found: OneExecution) -> str:
    rows: list[list[object]] = [
        [f"`{k.name}`", f"{k.kind} ({k.encoding}, {k.size} fields)", k.bytes_used,
         _ttl(k.ttl_seconds), k.purpose]
        for k in found.keys
    ]
    keys = _report.table(["key", "type", "MEMORY USAGE, bytes", "TTL", "purpose"], rows)
    held = found.index_while_running
    index = ("The recovery index of its partition held the execution while it ran "
             f"({held} member) and dropped it at the end (an empty zset is no key)."
             if held else "The recovery index did not hold the execution while it ran.")
    fields = ", ".join(f"`{name}` {size}" for name, size in found.fields)
    total = sum(size for _, size in found.fields)
    return "\n\n".join([
        f"**{found.way}**, keys left by one execution: {len(found.keys)}.", keys,
        prose(f"{index} Journal fields, bytes of name + value: {fields} (total {total})."),
    ])


def per_execution(found: Growth) -> float:
    return found.used_memory_delta / found.executions


def growth_section(found: list[Growth]) -> str:
    rows: list[list[object]] = [
        [g.way, f"{g.executions:,}", f"{g.keys_added:,}", f"{g.used_memory_delta:,}",
         f"{per_execution(g):.0f}",
         "met" if per_execution(g) <= GOAL_BYTES else "**missed**",
         f"{g.memory_usage_sum / max(g.keys_added, 1):.0f}",
         f"{g.executions / g.seconds:.0f}/s"]
        for g in found
    ]
    table = _report.table(
        ["executions run by", "executions", "keys added", "used_memory delta, bytes",
         "per execution, bytes", f"goal ≤ {GOAL_BYTES:,}", "MEMORY USAGE per key, bytes",
         "rate"],
        rows,
    )
    return table + "\n\n" + prose(goal(found))


def goal(found: list[Growth]) -> str:
    """Met or missed, row by row."""
    missed = [g for g in found if per_execution(g) > GOAL_BYTES]
    if not missed:
        return (f"**Goal met** in every row: a retained execution grew `used_memory` by at "
                f"most {GOAL_BYTES:,} bytes (1 KB).")
    rows = "; ".join(f"{g.way}: {per_execution(g):,.0f} bytes, "
                     f"{per_execution(g) / GOAL_BYTES:.1f}× the goal" for g in missed)
    met = [g.way for g in found if per_execution(g) <= GOAL_BYTES]
    also = f" Met by: {', '.join(met)}." if met else ""
    return (f"**Goal missed** (at most {GOAL_BYTES:,} bytes, 1 KB, of `used_memory` per "
            f"retained execution) by {len(missed)} of {len(found)} rows: {rows}.{also}")


def summary(grown: list[Growth], singles: list[OneExecution]) -> str:
    """The figure a user sizes Redis with, and what drives it."""
    runner, broker, tuned = (g.used_memory_delta / g.executions for g in grown)
    steps = [size for name, size in singles[0].fields if name.startswith("step:")]
    journal = next((k for k in singles[0].keys if k.name.endswith(":journal")), None)
    text = (
        f"A retained execution of this saga costs about **{broker:,.0f} bytes** of Redis "
        f"memory when a broker delivered it ({runner:,.0f} in-process), "
        f"{2 ** 30 / broker / 1e6:.2f} million per GiB: size Redis for the retention "
        "period times the rate of executions (a `compensation_failed` execution is kept "
        "until someone resolves it)."
    )
    if steps:
        text += (f" Each step's record takes {min(steps)}–{max(steps)} bytes (field name "
                 "and value) for a result of about ten: a positional array (result, status, "
                 "position, attempts, start and end times, order of completion), with "
                 "the items still at their defaults left off.")
    listpack = (f"a server with `hash-max-listpack-value 256` keeps it as a listpack, at "
                f"{tuned:,.0f} bytes per execution ({1 - tuned / broker:.0%} less)")
    if journal is not None and journal.encoding == "hashtable":
        text += (" A value longer than Redis's default `hash-max-listpack-value` (64) makes "
                 f"the journal a hashtable; {listpack}.")
    elif journal is not None:
        text += (f" The journal stays a {journal.encoding} under Redis's default "
                 f"`hash-max-listpack-value` (64); with 256, {tuned:,.0f} bytes per "
                 "execution.")
    return text


def prose(text: str) -> str:
    """A paragraph reflowed for the results file."""
    return textwrap.fill(" ".join(text.split()), 88, break_on_hyphens=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ttl(seconds: int) -> str:
    if seconds < 0:
        return "none"
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds} s"


def run(quick: bool) -> tuple[str, str]:
    """The results section's body and the server's version."""
    executions = QUICK_EXECUTIONS if quick else EXECUTIONS
    with redis_servers(1) as [server]:
        version = str(server.client().info("server")["redis_version"])
        singles = [one_execution(server, way) for way in WAYS]
        grown = [growth(server, way, executions) for way in WAYS]
        retention = RedisStore(server.client()).retention
    method = prose(
        f"""A 3-step saga (`reserve`, `charge`, `ship`, each returning a string of about
        a dozen bytes; idempotency keys `order-NNNNNN`) runs to success on a private
        `redis-server` (no persistence), with `RedisStore(namespace="{NAMESPACE}")` and
        its default retention ({retention / 86400:.0f} days): the record of a succeeded
        execution stays until then. Each way of running it starts from an empty
        server: first one execution, whose keys are listed with `MEMORY USAGE`
        (samples 0: every field counted), then {executions:,} executions one after the
        other, with the growth of `INFO memory` `used_memory` (which also counts the
        server's key tables and TTL table). Besides an execution's journal hash, each
        of a namespace's {PARTITIONS} partitions has two shared keys,
        `{NAMESPACE}:{{p<n>.<i>}}:index` (a zset of its executions not yet ended, which
        recovery scans) and `{NAMESPACE}:{{p<n>.<i>}}:recovered` (a hash counting the
        re-dispatches of executions recovery sent again; a claim clears its entry),
        each present only while not empty."""
    )
    body = "\n\n".join([
        method, *(keys_section(single) for single in singles), growth_section(grown),
        prose(summary(grown, singles)),
    ])
    return body, version


def main(argv: Sequence[str] | None = None) -> int:
    args = _report.parser(__doc__.splitlines()[0] if __doc__ else "").parse_args(argv)
    if _report.missing_redis_server("memory"):
        return 1
    try:
        body, version = run(args.quick)
    except redis.RedisError as exc:
        print(f"benchmarks.memory: Redis failed: {exc}")
        return 1
    _report.publish(args, "memory", "Memory: Redis bytes per journaled execution", body,
                    version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
