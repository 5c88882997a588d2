"""What the CLI prints that a program or a log reader relies on."""

from __future__ import annotations

import json

import pytest

from kompensa_workers.ops.cli import duration, emit, redact, run


def test_passwords_never_reach_the_output() -> None:
    assert redact("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact("rediss://app:s3cret@cache/1") == "rediss://app:***@cache/1"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"


def test_json_output_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"result": [float("nan"), float("inf"), 1.5], "nested": {"x": -float("inf")}})
    text = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data == {"result": ["nan", "inf", 1.5], "nested": {"x": "-inf"}}


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("7d", 604800.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_a_recovery_loop_without_a_pause_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Checked before anything is imported or connected: it would hammer Redis.
    code = run(["--redis-url", "redis://127.0.0.1:1/0", "recover", "--app", "nowhere:app",
                "--loop", "--interval", "0"])
    assert code == 2
    assert capsys.readouterr().err == (
        "kompensa-workers: --interval 0: a loop needs a pause above 0s\n"
    )
