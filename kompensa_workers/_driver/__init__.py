"""What every broker adapter shares: ``deliver()`` (one delivery, four outcomes),
the in-process runner, the adapter binding (options, keys, outcome → broker action,
the defer rule, the ``Dispatch`` record, recovery) and trace propagation. Private:
the public names are re-exported by ``kompensa_workers``."""
