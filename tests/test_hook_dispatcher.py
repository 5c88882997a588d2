"""HookDispatcher says whether anyone listens, so events nobody hears are not built."""

from __future__ import annotations

from kompensa_workers.hooks import Hooks, StepEvent, dispatcher, install, uninstall


class Heard(Hooks):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def on_step_start(self, event: StepEvent) -> None:
        self.steps.append(event.step)


def test_nobody_listens_without_hooks() -> None:
    # Given no hooks passed and none installed
    hooks = dispatcher(None)
    # Then the dispatcher says so, and is the same one every delivery gets
    assert not hooks.listening and not hooks
    assert dispatcher(None) is hooks
    assert not dispatcher([]) and not dispatcher(hooks)


def test_given_hooks_listen() -> None:
    heard = Heard()
    hooks = dispatcher(heard)
    assert hooks.listening and hooks
    hooks.on_step_start(StepEvent("k", "reserve", 1))
    assert heard.steps == ["reserve"]
    assert dispatcher(hooks).listening and dispatcher([heard]).listening


def test_installed_hooks_listen_until_uninstalled() -> None:
    # Given hooks installed in the process
    heard = Heard()
    install(heard)
    try:
        # Then a delivery without hooks= listens, and one with its own hears both
        assert dispatcher(None).listening
        own = Heard()
        dispatcher(own).on_step_start(StepEvent("k", "charge", 1))
        assert heard.steps == own.steps == ["charge"]
        dispatcher(None).on_step_start(StepEvent("k", "ship", 1))
        assert heard.steps == ["charge", "ship"]
    finally:
        uninstall(heard)
    # When they are uninstalled, then nobody listens again
    assert not dispatcher(None)
