"""How a saga's message is recorded as it is published, and what recovery needs to
publish it again.

``before_task_publish`` fires for every message Celery publishes, whatever sent it
(``.delay()``, ``apply_async``, ``send_task`` by name, a chain's or a chord's
next link, a group): a first send of a saga task is recorded ``queued`` there,
once, and its headers say so (``kompensa_recorded``) when the journal took it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from celery import current_app
from kombu.utils import json as kombu_json

from .._driver.binding import SagaBinding
from .._driver.dispatch import Dispatch

TOKEN_HEADER = "kompensa_lease_token"
KEY_HEADER = "kompensa_key"  # the execution a rollback-after-revoke message belongs to
RECORDED_HEADER = "kompensa_recorded"  # the journal holds this execution: never a fresh start
REPORT_WAIT_HEADER = "kompensa_report_wait"  # re-sends spent waiting for the finisher
# Headers only a delivery or recovery puts on a message: it is not a first send.
RESENT_HEADERS = (TOKEN_HEADER, KEY_HEADER, RECORDED_HEADER, REPORT_WAIT_HEADER)
# What a delivery was sent with, kept for recovery to send it the same way.
RESEND_OPTIONS = (
    "queue", "exchange", "routing_key", "priority", "chain", "link", "link_error",
    "chord", "group_id", "group_index", "root_id", "parent_id", "time_limit",
    "soft_time_limit", "headers", "reply_to", "shadow", "ignore_result",
)
# Celery's own message headers (task protocol 2); any other header is the sender's.
PROTOCOL_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
    "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
})

# The saga task whose apply_async is publishing in this context (a message sent by
# name is looked up in the current app instead).
publishing: contextvars.ContextVar[SagaBinding | None] = contextvars.ContextVar(
    "kompensa_celery_publishing", default=None)


def binding_of(name: str) -> SagaBinding | None:
    """The saga task a message named ``name`` is for, if this process declares it."""
    binding = publishing.get()
    if binding is not None and binding.name == name:
        return binding
    try:
        found = getattr(current_app.tasks.get(name), "saga", None)
    except RuntimeError:  # an app with autofinalize=False, not finalized yet
        return None
    return found if isinstance(found, SagaBinding) else None


def record_send(
    sender: Any = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
    headers: Any = None, properties: Any = None, **_: Any,
) -> None:
    """``before_task_publish``: record a saga task's first send ``queued`` and say
    so in its headers. Never raises (the binding's ``expect`` bounds the wait)."""
    binding = binding_of(sender) if isinstance(sender, str) else None
    if binding is None or not isinstance(headers, dict) or headers.get("retries"):
        return
    if any(name in headers for name in RESENT_HEADERS):
        return  # a re-send: the delivery or recovery that made it knows the journal
    dispatch = message_dispatch(sender, body, exchange, routing_key, headers, properties)
    if dispatch is not None and binding.expect(dispatch, after=countdown(headers)):
        headers[RECORDED_HEADER] = 1


def message_dispatch(
    name: str, body: Any, exchange: Any, routing_key: Any, headers: Mapping[str, Any],
    properties: Any,
) -> Dispatch | None:
    """The Dispatch of a message about to be published (None if it cannot be read)."""
    if isinstance(body, (tuple, list)) and len(body) == 3:  # task protocol 2
        args, kwargs, embed = body
    elif isinstance(body, Mapping):  # task protocol 1
        args, kwargs, embed = body.get("args"), body.get("kwargs"), body
        headers = {**body, **headers}
    else:
        return None
    embed = embed if isinstance(embed, Mapping) else {}
    props = properties if isinstance(properties, Mapping) else {}
    hard, soft = (list(headers.get("timelimit") or ()) + [None, None])[:2]
    options: dict[str, Any] = {
        "link": embed.get("callbacks"), "link_error": embed.get("errbacks"),
        "chain": embed.get("chain"), "chord": embed.get("chord"),
        "group_id": headers.get("group"), "group_index": headers.get("group_index"),
        "root_id": headers.get("root_id"), "parent_id": headers.get("parent_id"),
        "shadow": headers.get("shadow"), "ignore_result": headers.get("ignore_result"),
        "time_limit": hard, "soft_time_limit": soft,
        "priority": props.get("priority"), "reply_to": props.get("reply_to"),
        "headers": {k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS},
    }
    if exchange:  # a named exchange routes by key; the default one, to the queue named
        options.update(exchange=exchange, routing_key=routing_key)
    elif routing_key:
        options["queue"] = routing_key
    return Dispatch("celery", name, str(headers.get("id")), tuple(args or ()),
                    dict(kwargs or {}), resend_options(options))


def resend_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options recovery sends a message again with (plain JSON data)."""
    kept = {
        name: options[name] for name in RESEND_OPTIONS
        if options.get(name) not in (None, "", [], {})
    }
    if "queue" in kept and not isinstance(kept["queue"], str):  # a kombu Queue
        kept["queue"] = getattr(kept["queue"], "name", None) or kept.pop("queue")
    headers = without_token(kept.pop("headers", None))
    if headers:
        kept["headers"] = headers
    # Signatures are dict subclasses: keep plain JSON data.
    return kombu_json.loads(kombu_json.dumps(kept))  # type: ignore[no-any-return,no-untyped-call]


def countdown(headers: Mapping[str, Any]) -> float:
    """How long a message with these headers waits before it is due (its ``eta``)."""
    eta = headers.get("eta")
    if isinstance(eta, str):
        try:
            eta = datetime.fromisoformat(eta)
        except ValueError:
            return 0.0
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        return max(eta.timestamp() - time.time(), 0.0)
    return 0.0


def without_token(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A message's headers minus a lease token, which belongs to one delivery only."""
    return {k: v for k, v in (headers or {}).items() if k != TOKEN_HEADER}
