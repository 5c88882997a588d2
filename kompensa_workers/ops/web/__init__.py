"""The browser dashboard (extra ``web``): ``kompensa-workers web`` serves it;
:func:`create_app` gives the ASGI app to mount in FastAPI, Starlette or Django."""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"the kompensa-workers dashboard needs Starlette and Jinja2 ({exc.name} is "
        "missing): pip install 'kompensa-workers[web]'"
    ) from exc

from .app import ACTIONS, create_app
from .views import Redactor, hide_secrets

__all__ = ["ACTIONS", "Redactor", "create_app", "hide_secrets"]
