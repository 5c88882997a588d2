"""A checkout saga run by a worker that can be paused past its lease.

``python -m integrations.workers.fenced URL NAMESPACE KEY MARKER`` runs one
delivery as the *stale* worker: its 'pay' step writes MARKER, then takes 3 s (the
test SIGSTOPs it meanwhile). Exit code 3 means its writes were refused (LeaseLost).
The test process runs the same saga as the *fresh* worker.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kompensa_workers import LeaseLost, RedisStore, Saga, deliver


def pay() -> str:
    if os.environ.get("KW_ROLE") == "stale":
        Path(os.environ["KW_MARKER"]).write_text("started")
        time.sleep(3)
        return "paid by the stale worker"
    return "paid by the fresh worker"


def ship() -> str:
    return f"shipped by the {os.environ.get('KW_ROLE', 'fresh')} worker"


def checkout(saga: Saga) -> str:
    paid = saga.step("pay", pay)
    shipped = saga.step("ship", ship)
    return f"{paid}; {shipped}"


def main() -> int:
    url, namespace, key, marker = sys.argv[1:5]
    os.environ.update(KW_ROLE="stale", KW_MARKER=marker)
    store = RedisStore.from_url(url, namespace=namespace, lock_ttl=1.0)
    # Run as __main__, this file's own checkout would be journaled as
    # '__main__.checkout'; the importable one has the name every worker shares.
    from integrations.workers.fenced import checkout as shared_checkout

    try:
        outcome = deliver(shared_checkout, key=key, store=store)
    except LeaseLost as exc:
        print(f"refused: {exc}", flush=True)
        return 3
    print(f"outcome: {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
