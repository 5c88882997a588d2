"""The Lua scripts, loaded from the ``.lua`` files beside this module."""

from __future__ import annotations

from importlib import resources

NAMES = ("expect", "claim", "commit", "renew", "release", "cancel", "due", "take_due",
         "purge", "reopen", "schedule", "take_scheduled")


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text("utf-8")

