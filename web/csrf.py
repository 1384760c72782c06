"""CSRF protection for the dashboard's forms: a per-session token, checked on every POST.

The dashboard's login is HTTP basic auth, which a browser sends with any request to
this origin, a forged cross-site form post included. So every POST must carry the
token kept in the signed session cookie (HttpOnly, SameSite=Strict): another site
can neither read it nor guess it. A missing token is 400, a wrong one 403, and a
request that says it comes from another site (Origin, Sec-Fetch-Site) 403; none
changes anything. The session is signed with a
key derived from INTERNAL_API_TOKEN, so every web worker accepts it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, abort, request, session

FIELD = "csrf_token"


def init_app(app: Flask) -> None:
    """Sign sessions (unless the app already has a key) and keep the cookie from cross-site requests."""
    if not app.secret_key:
        internal = app.extensions["credentials"].internal_token
        app.secret_key = hmac.new(internal.encode(), b"dashboard session", hashlib.sha256).digest()
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.jinja_env.globals["csrf_token"] = token


def token() -> str:
    """This session's token (made on first use): forms put it in their `csrf_token` field."""
    if FIELD not in session:
        session[FIELD] = secrets.token_urlsafe(32)
    return session[FIELD]


def check() -> None:
    """Before a POST: 403 from another origin, 400 without the token, 403 with a wrong one."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("Origin")  # "null" under our Referrer-Policy no-referrer: the token decides
    site = request.headers.get("Sec-Fetch-Site")
    if (origin not in (None, "null") and urlsplit(origin).netloc != request.host) or site not in (
            None, "same-origin", "none"):
        abort(403, "Cross-origin form posts are refused")
    given = request.form.get(FIELD)
    if not given:
        abort(400, "The form has no CSRF token: reload the page and try again")
    expected = session.get(FIELD)
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(403, "The form's CSRF token is wrong or expired: reload the page and try again")
