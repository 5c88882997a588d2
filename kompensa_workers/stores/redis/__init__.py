"""RedisStore: the journal and lease of every execution in Redis, one Lua call per
journal operation.

Round trips per delivery: claim (1), one fenced commit per step (N), the final
commit that releases the lease (1) — N + 2 for a happy-path N-step saga. The
heartbeat adds one per ttl/3 while a step runs longer than that.
"""

from __future__ import annotations

from .store import RedisStore

__all__ = ["RedisStore"]
