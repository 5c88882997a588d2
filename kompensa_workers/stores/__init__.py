"""Journals: the store protocol (``Store``, ``Claim``, ``Lease``, ``JournalWrite``
— public, for people who write their own store), ``MemoryStore``, the lease
heartbeat, and ``RedisStore`` with ``Redlock`` under ``stores.redis``."""
