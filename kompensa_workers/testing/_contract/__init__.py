"""The scenarios of :class:`kompensa_workers.testing.StoreContract`, by subject."""
