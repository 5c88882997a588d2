"""The Lua scripts, loaded from the ``.lua`` files beside this module."""

from __future__ import annotations

from importlib import resources

import redis

NAMES = ("expect", "claim", "commit", "renew", "release", "cancel", "due", "take_due",
         "purge", "reopen")


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")


def register(client: redis.Redis) -> dict[str, redis.commands.core.Script]:
    """Scripts bound to ``client``; each call is one EVALSHA (EVAL after a restart
    flushed the script cache)."""
    return {name: client.register_script(source(name)) for name in NAMES}
