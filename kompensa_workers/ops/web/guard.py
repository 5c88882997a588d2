"""Who may act: the dashboard's token, its login cookie and the CSRF check.

Without a token the dashboard is read-only. With one, an action (a ``POST``) is let
through for a request that carries ``Authorization: Bearer <token>`` (a program), or
the login form's session cookie together with the form's CSRF field (a person in a
browser; a page elsewhere can make the browser send the cookie but cannot read the
field). Cookies and CSRF fields are signed with a key derived from the token, so
the server keeps no session state and a new token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

__all__ = ["COOKIE", "Guard", "Refused"]

COOKIE = "kompensa_session"
SESSION_SECONDS = 12 * 3600


class Refused(Exception):
    """An action not allowed: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Guard:
    """Checks a request's right to act against ``token`` (None: read-only)."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the dashboard's token is empty: give a secret, or none "
                             "for a read-only dashboard")
        self.token = token
        self._key = (hashlib.sha256(b"kompensa-workers web\0" + token.encode()).digest()
                     if token is not None else b"")

    @property
    def read_only(self) -> bool:
        return self.token is None

    def new_session(self, *, now: float | None = None) -> str:
        """A login cookie's value."""
        issued = str(int(time.time() if now is None else now))
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{issued}.{self._sign('session', sid, issued)}"

    def session(self, cookie: str | None, *, now: float | None = None) -> str | None:
        """The session id in a login cookie that this token signed and that has not
        expired; else None."""
        if self.token is None or not cookie:
            return None
        sid, _, rest = cookie.partition(".")
        issued, _, signature = rest.partition(".")
        if not (sid and issued.isdigit() and signature):
            return None
        if not hmac.compare_digest(signature, self._sign("session", sid, issued)):
            return None
        age = (time.time() if now is None else now) - int(issued)
        return sid if 0 <= age <= SESSION_SECONDS else None

    def csrf(self, sid: str) -> str:
        """The CSRF field for the forms of session ``sid``."""
        return self._sign("csrf", sid)

    def login(self, given: str) -> bool:
        """Whether ``given`` is the token."""
        return self.token is not None and hmac.compare_digest(given.encode(),
                                                              self.token.encode())

    def check(self, headers: Mapping[str, str], cookie: str | None,
              csrf: str | None) -> None:
        """Let an action through, or raise :class:`Refused` saying why."""
        if self.token is None:
            raise Refused(403, "this dashboard is read-only: it was started without a token "
                               "(kompensa-workers web --token …)")
        authorization = headers.get("authorization", "")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer":
            if self.login(given.strip()):
                return
            raise Refused(401, "the bearer token is not this dashboard's token")
        sid = self.session(cookie)
        if sid is None:
            raise Refused(401, "log in with the dashboard's token to act "
                               "(or send Authorization: Bearer <token>)")
        if not csrf or not hmac.compare_digest(csrf, self.csrf(sid)):
            raise Refused(403, "the form's CSRF check failed: reload the page and try again")

    def _sign(self, *parts: str) -> str:
        message = "\0".join(parts).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]
