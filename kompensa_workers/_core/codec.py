"""msgpack codec for journaled values, with explicit extension types. Never pickle.

Supported: None, bool, int (any size), float, str, bytes, list, dict, and as
extension types tuple, set, frozenset, datetime (zone names kept), date, time,
timedelta, Decimal and UUID. Anything else, subclasses included, is refused with a
:class:`SerializationError` naming the type and where in the value it sits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

from ..errors import SerializationError

__all__ = ["check_arguments", "check_size", "decode", "encode", "fingerprint", "is_utf8"]

_TUPLE, _SET, _FROZENSET, _BIGINT = 1, 2, 3, 4
_DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _UUID = 5, 6, 7, 8, 9, 10


# Making a Packer costs more than packing a small value with it: idle ones wait
# here. One is taken out while in use (list.pop and append are atomic), since
# threads pack at once and _default packs nested values (a tuple's items) while
# the outer pack is under way. A Packer keeps the buffer its largest value grew:
# one that packed more than its initial buffer (256 KiB) is let go.
_idle_packers: list[Any] = []
_POOLED_UP_TO = 256 * 1024


def _pack(value: object) -> bytes:
    try:
        packer = _idle_packers.pop()
    except IndexError:
        packer = msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)
    packed: bytes = packer.pack(value)  # a failed pack leaves it empty: it is let go
    if len(packed) <= _POOLED_UP_TO:
        _idle_packers.append(packer)
    return packed


def _default(value: object) -> msgpack.ExtType:
    kind = type(value)
    if kind is tuple:
        return msgpack.ExtType(_TUPLE, _pack(list(value)))  # type: ignore[call-overload]
    if kind is set or kind is frozenset:
        code = _SET if kind is set else _FROZENSET
        return msgpack.ExtType(code, _pack(list(value)))  # type: ignore[call-overload]
    if kind is int:
        return msgpack.ExtType(_BIGINT, str(value).encode())
    if kind is dt.datetime:
        assert isinstance(value, dt.datetime)
        if isinstance(value.tzinfo, ZoneInfo):  # wall time + zone name + fold
            wall = value.replace(tzinfo=None).isoformat()
            return msgpack.ExtType(_DATETIME, _pack([wall, value.tzinfo.key, value.fold]))
        return msgpack.ExtType(_DATETIME, _pack([value.isoformat(), None, value.fold]))
    if kind is dt.date:
        assert isinstance(value, dt.date)
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if kind is dt.time:
        assert isinstance(value, dt.time)
        if value.tzinfo is not None and not isinstance(value.tzinfo, dt.timezone):
            raise TypeError(value)
        return msgpack.ExtType(_TIME, _pack([value.isoformat(), value.fold]))
    if kind is dt.timedelta:
        assert isinstance(value, dt.timedelta)
        parts = [value.days, value.seconds, value.microseconds]
        return msgpack.ExtType(_TIMEDELTA, _pack(parts))
    if kind is Decimal:
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if kind is uuid.UUID:
        assert isinstance(value, uuid.UUID)
        return msgpack.ExtType(_UUID, value.bytes)
    raise TypeError(value)


def _ext_hook(code: int, payload: bytes) -> object:
    if code == _TUPLE:
        return tuple(_unpack(payload))
    if code == _SET:
        return set(_unpack(payload))
    if code == _FROZENSET:
        return frozenset(_unpack(payload))
    if code == _BIGINT:
        return int(payload.decode())
    if code == _DATETIME:
        iso, zone, fold = _unpack(payload)
        moment = dt.datetime.fromisoformat(iso).replace(fold=fold)
        return moment.replace(tzinfo=ZoneInfo(zone)) if zone else moment
    if code == _DATE:
        return dt.date.fromisoformat(payload.decode())
    if code == _TIME:
        iso, fold = _unpack(payload)
        return dt.time.fromisoformat(iso).replace(fold=fold)
    if code == _TIMEDELTA:
        days, seconds, micros = _unpack(payload)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _DECIMAL:
        return Decimal(payload.decode())
    if code == _UUID:
        return uuid.UUID(bytes=payload)
    raise ValueError(f"unknown extension type {code}")


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(
        payload, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True
    )


def encode(value: object, *, step: str | None = None, what: str = "value") -> bytes:
    """Encode ``value``; ``step`` and ``what`` name it in the error if it cannot be."""
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        path, bad = _find_unencodable(value, what)
        type_name = _type_name(bad)
        raise SerializationError(
            f"{path} is of type {type_name}, which cannot be journaled (supported: "
            "None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
            "datetime, date, time, timedelta, Decimal, UUID)",
            step=step,
            type_name=type_name,
        ) from exc


def decode(data: bytes, *, what: str = "record") -> Any:
    """Decode bytes written by :func:`encode`; corrupt input raises SerializationError."""
    try:
        return _unpack(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot decode {what}: {type(exc).__name__}: {exc}; the stored data is "
            "corrupt or was written by an incompatible version"
        ) from exc


def fingerprint(value: object, *, what: str = "value") -> str:
    """A stable hash of ``value``: equal for equal values in any process.

    Dict and set order do not matter (they are sorted by their encoded form).
    """
    try:
        packed = _pack(_canonical(value))
    except (TypeError, ValueError, OverflowError):
        encode(value, what=what)  # raises the SerializationError naming the part
        raise
    return hashlib.sha256(packed).hexdigest()


def _canonical(value: object) -> object:
    kind = type(value)
    if kind is dict:
        assert isinstance(value, dict)
        items = [(_pack(_canonical(k)), _canonical(v)) for k, v in value.items()]
        return ["dict", sorted(items, key=lambda item: item[0])]
    if kind is set or kind is frozenset:
        assert isinstance(value, (set, frozenset))
        return [kind.__name__, sorted(_pack(_canonical(v)) for v in value)]
    if kind is list or kind is tuple:
        assert isinstance(value, (list, tuple))
        return [kind.__name__, [_canonical(v) for v in value]]
    return value


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}"
    )


def _find_unencodable(value: object, path: str) -> tuple[str, object]:
    """The path and value of the first part of ``value`` the codec refuses."""
    kind = type(value)
    if kind is dict:
        assert isinstance(value, dict)
        for k, v in value.items():
            if not _encodes(k):
                return _find_unencodable(k, f"{path} key {k!r}")
            if not _encodes(v):
                return _find_unencodable(v, f"{path}[{k!r}]")
    elif kind in (list, tuple, set, frozenset):
        assert isinstance(value, (list, tuple, set, frozenset))
        for index, item in enumerate(value):
            if not _encodes(item):
                return _find_unencodable(item, f"{path}[{index}]")
    return path, value


def _encodes(value: object) -> bool:
    try:
        _pack(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], *, owner: str) -> None:
    """Raise SerializationError naming the first argument of ``owner`` that cannot be
    journaled (``argument 2 of task 'shop.checkout'``)."""
    for index, value in enumerate(args):
        encode(value, what=f"argument {index + 1} of {owner}")
    for keyword, value in kwargs.items():
        encode(value, what=f"keyword argument {keyword!r} of {owner}")


def check_size(
    encoded: bytes, max_bytes: int, *, what: str, step: str | None = None,
    type_name: str | None = None,
) -> bytes:
    """``encoded`` if it fits the store's ``max_value_bytes``, else SerializationError."""
    if len(encoded) > max_bytes:
        raise SerializationError(
            f"the {what} takes {len(encoded)} bytes, over the store's max_value_bytes "
            f"of {max_bytes}; journal a reference instead",
            step=step, type_name=type_name,
        )
    return encoded
