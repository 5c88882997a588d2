"""The core's rules adapters use, through the driver (adapters do not import the
core): checking option values, and encoding what they keep in the journal."""

from __future__ import annotations

from .._core.check import count, number
from .._core.codec import decode, encode

__all__ = ["count", "decode", "encode", "number"]
