"""The saga state machine and its sync and async shells: journal decisions
(``journal``), records and codec, and the engine that runs steps, attempts,
parallel groups and rollbacks against a store. Private: nothing here is imported
by users directly; the public names are re-exported by ``kompensa_workers``."""
