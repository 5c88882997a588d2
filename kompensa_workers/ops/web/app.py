"""The dashboard's ASGI app: pages for people, the same data as JSON under ``/api/``.

Routes (relative to wherever the app is mounted)::

    GET  /                                  executions: counts, filters, search, pages
    GET  /executions/<key>                  one execution: timeline, steps, errors
    GET  /api/executions[?status&saga&q&page&per_page]
    GET  /api/executions/<key>
    POST /actions/<action>/<key>            a form's action (login cookie + CSRF field)
    POST /api/actions/<action>/<key>        a program's (Authorization: Bearer <token>)
    GET  /login, POST /login, POST /logout

``<action>``: ``cancel``, ``retry-compensation``, ``mark-resolved``, ``purge``. A key
travels percent-encoded as one path segment (``/`` as ``%2F``), so any key
round-trips. Store reads and writes run on a worker thread (the stores block).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...errors import SerializationError, StoreMisconfigured, StoreUnavailable
from ...stores.protocol import Store
from .. import admin
from ..timeline import age
from .chart import chart
from .guard import COOKIE, Guard, Refused
from .views import ORDER, Query, Redactor, detail, hide_secrets, page

__all__ = ["ACTIONS", "create_app"]

ACTIONS: dict[str, str] = {
    "cancel": "Cancel",
    "retry-compensation": "Retry compensation",
    "mark-resolved": "Mark resolved",
    "purge": "Purge",
}
REFRESH_SECONDS = 3.0


def create_app(store: Store, *, token: str | None = None,
               redact: Redactor | None = None, title: str = "kompensa-workers",
               refresh: float = REFRESH_SECONDS,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The dashboard over ``store`` as an ASGI app (mount it in FastAPI, Starlette or
    a Django ASGI router, or serve it with ``kompensa-workers web``).

    ``token``: the secret that lets people (login form) and programs (bearer header)
    act; None: read-only. ``redact``: shown arguments and results pass through it
    (default :func:`~kompensa_workers.ops.web.views.hide_secrets`). ``refresh``:
    seconds between live updates of an open page (0: none). ``allowed_hosts``: the
    only ``Host`` names served (others get 400), e.g. the loopback names for a
    dashboard on 127.0.0.1, so a page elsewhere cannot read it through DNS
    rebinding; None: any.
    """
    dashboard = Dashboard(store, Guard(token), redact or hide_secrets, title, refresh)
    if allowed_hosts is not None:
        dashboard.app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts),
                                     www_redirect=False)
    return dashboard.app


class Dashboard:
    def __init__(self, store: Store, guard: Guard, redact: Redactor, title: str,
                 refresh: float) -> None:
        self.store, self.guard, self.redact = store, guard, redact
        self.title, self.refresh = title, refresh
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("kompensa_workers.ops.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
        )
        self.templates.filters["key"] = lambda key: quote(key, safe="")
        self.templates.filters["json"] = lambda value: json.dumps(
            value, indent=2, ensure_ascii=False, default=repr)
        self.templates.globals.update(ACTIONS=ACTIONS, ORDER=ORDER, age=age,
                                      urlencode=urlencode)
        self.app = Starlette(routes=[
            Route("/", self.executions, name="executions"),
            Route("/executions/{key:path}", self.execution, name="execution"),
            Route("/api/executions", self.api_executions),
            Route("/api/executions/{key:path}", self.api_execution),
            Route("/actions/{action}/{key:path}", self.form_action, methods=["POST"]),
            Route("/api/actions/{action}/{key:path}", self.api_action, methods=["POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("kompensa_workers.ops.web", "static")]),
                  name="static"),
        ], exception_handlers={Refused: self.refused})

    # -- pages ----------------------------------------------------------------

    async def executions(self, request: Request) -> Response:
        try:
            query = Query.parse(request.query_params)
        except ValueError as exc:
            return self.message(request, 400, "Bad request", str(exc))
        listing = await self.ask(request, lambda: admin.executions(self.store))
        if isinstance(listing, Response):
            return listing
        found, skipped = listing
        shown = page(found, skipped, query)
        fragment = request.query_params.get("fragment") == "1"
        return self.render(request, "_list.html" if fragment else "list.html",
                           page=shown, query=query, now=time.time(),
                           purged=request.query_params.get("purged", ""))

    async def execution(self, request: Request) -> Response:
        key = _key(request, 1)
        found = await self.ask(request, lambda: admin.get(self.store, key))
        if isinstance(found, Response):
            return found
        now = time.time()
        fragment = request.query_params.get("fragment") == "1"
        return self.render(
            request, "_execution.html" if fragment else "execution.html",
            execution=detail(found, self.redact), chart=chart(found, now=now),
            actions=_allowed(found.status, found.cancel_requested),
            done=request.query_params.get("done", ""), now=now,
        )

    async def login(self, request: Request) -> Response:
        target = _local(request.query_params.get("next", ""))
        if request.method == "GET":
            return self.render(request, "login.html", target=target, error="")
        form = await request.form()
        target = _local(str(form.get("next", "")))
        if self.guard.read_only:
            return self.render(request, "login.html", target=target, status_code=403,
                               error="This dashboard is read-only: it was started "
                                     "without a token.")
        if not self.guard.login(str(form.get("token", ""))):
            return self.render(request, "login.html", target=target, status_code=401,
                               error="That is not this dashboard's token.")
        response = RedirectResponse(self.base(request) + (target or "/"), status_code=303)
        response.set_cookie(COOKIE, self.guard.new_session(), httponly=True,
                            samesite="strict", path=self.base(request) or "/",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(self.base(request) + "/", status_code=303)
        response.delete_cookie(COOKIE, path=self.base(request) or "/")
        return response

    # -- actions --------------------------------------------------------------

    async def form_action(self, request: Request) -> Response:
        form = await request.form()
        self.guard.check(request.headers, request.cookies.get(COOKIE),
                         str(form.get("csrf", "")))
        key, action = _key(request, 2), request.path_params["action"]
        done = await self.act(request, action, key)
        if isinstance(done, Response):
            return done
        base = self.base(request)
        if action == "purge":
            return RedirectResponse(f"{base}/?{urlencode({'purged': key})}", status_code=303)
        return RedirectResponse(f"{base}/executions/{quote(key, safe='')}?done={action}",
                                status_code=303)

    async def api_action(self, request: Request) -> Response:
        self.guard.check(request.headers, None, None)  # programs: the bearer token only
        key, action = _key(request, 3), request.path_params["action"]
        done = await self.act(request, action, key)
        if isinstance(done, Response):
            return done
        return JSONResponse({"action": action, **done})

    async def act(self, request: Request, action: str, key: str) -> dict[str, Any] | Response:
        calls: dict[str, Callable[[], Any]] = {
            "cancel": lambda: admin.cancel(self.store, key),
            "retry-compensation": lambda: admin.retry_compensation(self.store, key),
            "mark-resolved": lambda: admin.mark_resolved(self.store, key),
            "purge": lambda: admin.purge_one(self.store, key),
        }
        if action not in calls:
            return self.failure(request, 404, f"no action {action!r} (one of "
                                f"{', '.join(ACTIONS)})")
        outcome = await self.ask(request, calls[action])
        if isinstance(outcome, Response):
            return outcome
        status = getattr(outcome, "status", None)
        return {"key": key, **({"status": status} if status else {})}

    # -- JSON -----------------------------------------------------------------

    async def api_executions(self, request: Request) -> Response:
        try:
            query = Query.parse(request.query_params)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        listing = await self.ask(request, lambda: admin.executions(self.store))
        if isinstance(listing, Response):
            return listing
        found, skipped = listing
        return JSONResponse(page(found, skipped, query).to_json())

    async def api_execution(self, request: Request) -> Response:
        key = _key(request, 2)
        found = await self.ask(request, lambda: admin.get(self.store, key))
        if isinstance(found, Response):
            return found
        return JSONResponse(detail(found, self.redact))

    # -- plumbing -------------------------------------------------------------

    async def ask(self, request: Request, call: Callable[[], Any]) -> Any:
        """``call()`` on a worker thread; a refusal or a journal in trouble as the
        response that says so."""
        try:
            return await run_in_threadpool(call)
        except admin.AdminError as exc:
            code = {"not_found": 404, "wrong_status": 409, "changed": 409}[exc.code]
            return self.failure(request, code, str(exc))
        except StoreUnavailable as exc:
            return self.failure(request, 503, f"the journal cannot be reached: {exc}")
        except StoreMisconfigured as exc:
            return self.failure(request, 503, f"the journal refuses the dashboard: {exc}")
        except SerializationError as exc:
            return self.failure(request, 500, f"the record cannot be read: {exc}")

    def failure(self, request: Request, status: int, text: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": text}, status_code=status)
        heading = {404: "Not found", 409: "Not now", 503: "Journal unreachable"}.get(
            status, "Error")
        return self.message(request, status, heading, text)

    async def refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if _wants_json(request):
            return JSONResponse({"error": exc.message}, status_code=exc.status,
                                headers=headers)
        response = self.message(request, exc.status, "Not allowed", exc.message)
        if headers:
            response.headers.update(headers)
        return response

    def message(self, request: Request, status: int, heading: str, text: str) -> Response:
        return self.render(request, "message.html", status_code=status, heading=heading,
                           text=text)

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(self, request: Request, name: str, *, status_code: int = 200,
               **context: Any) -> Response:
        sid = self.guard.session(request.cookies.get(COOKIE))
        base = self.base(request)
        here = request.url.path[len(base):] + (f"?{request.url.query}"
                                               if request.url.query else "")
        html = self.templates.get_template(name).render(
            base=base, title=self.title, refresh=self.refresh, here=here,
            read_only=self.guard.read_only, signed_in=sid is not None,
            csrf=self.guard.csrf(sid) if sid else "", **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=_SECURITY)


_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _key(request: Request, prefix: int) -> str:
    """The execution key in the path after ``prefix`` segments of the route, read
    from the raw path and decoded exactly once where the server gives it (so a key
    holding ``%2F`` stays itself whatever the server or client did to the path)."""
    raw = request.scope.get("raw_path")
    decoded = str(request.path_params["key"])
    if not raw:
        return decoded
    root = str(request.scope.get("root_path", "")).strip("/")
    skip = 1 + (len(root.split("/")) if root else 0) + prefix  # the leading "" too
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")
    if len(parts) <= skip:
        return decoded
    return unquote("/".join(parts[skip:]), errors="strict")


def _allowed(status: str, cancel_requested: bool) -> list[str]:
    """The actions an execution in ``status`` allows."""
    if status == "compensation_failed":
        return ["retry-compensation", "mark-resolved", "purge"]
    if status in ("succeeded", "compensated", "cancelled"):
        return ["purge"]
    return [] if cancel_requested else ["cancel"]


def _local(target: str) -> str:
    """A ``next`` path inside the dashboard only (never another site: browsers read
    ``//host`` and ``/\\host`` as another host)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return ""
    return "" if any(c in target for c in "\\\r\n\t") else target


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(
        str(request.scope.get("root_path", "")).rstrip("/") + "/api/")

