"""The store's command packer without hiredis writes the same bytes as hiredis's."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompensa_workers.stores.redis.wire import ScriptCaller, pack, pack_resp


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=12))
def test_the_python_packer_matches_hiredis(words: list[bytes]) -> None:
    assert pack_resp(words) == hiredis.pack_command(tuple(words)) == pack(words)


def test_a_word_of_another_type_is_refused_by_name() -> None:
    import fakeredis

    caller = ScriptCaller(fakeredis.FakeRedis(), ["renew"])
    with pytest.raises(TypeError, match="must be bytes, str or int, got 1.5"):
        caller("renew", ["k"], [1.5])  # type: ignore[list-item]
