"""RedisStore: the journal and lease of every execution in Redis, one Lua call per
journal operation.

Round trips per delivery: the claim with the first step's intent (1), then one
fenced commit per step carrying its result and the next step's intent, the last
one the end and the lease's release (N) — N + 1 for a happy-path N-step saga. The
heartbeat adds one per ttl/3 while a step runs longer than that.
"""

from __future__ import annotations

from .store import RedisStore

__all__ = ["RedisStore"]
