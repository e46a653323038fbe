"""Sessions and CSRF tokens of the admin web page (issue #19 item 6): pure functions.

Rules of this module:
- A browser logs in once with the admin token and gets a session cookie instead:
  `ISSUED.NONCE.MAC`, the MAC an HMAC-SHA256 keyed with the admin token. Any node of
  the cluster checks it without shared state (they share the token), so the cookie,
  which a browser sends to every port of the host, works on the peer's page too. It
  expires `SESSION_TTL_S` after it was issued; a token change (a new cluster secret)
  voids every session.
- The cookie is `HttpOnly; SameSite=Strict` and never enough to act: an action needs
  the session's CSRF token (a second HMAC of the session) in a header, and a request
  whose `Origin` or `Sec-Fetch-Site` says it comes from another origin is refused. A
  page on another port of the same host is another origin (the cookie alone reaches
  it: same site), which is why the header token is required.
- Comparisons are constant time. Nothing here does I/O or reads the clock: `now`
  and the nonce come in as arguments.
"""

from __future__ import annotations

import hashlib
import hmac

SESSION_COOKIE = "presence_ha_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600


def _mac(token: str, label: str, value: str) -> str:
    return hmac.new(token.encode(), f"{label}:{value}".encode(), hashlib.sha256).hexdigest()


def issue_session(token: str, now: float, nonce: bytes) -> str:
    """A session cookie value issued at `now` (seconds since the epoch)."""
    body = f"{int(now)}.{nonce.hex()}"
    return f"{body}.{_mac(token, 'session', body)}"


def session_valid(token: str, session: str | None, now: float) -> bool:
    """`session` was issued with `token` and has not expired at `now`."""
    if not session or session.count(".") != 2:
        return False
    body, _, mac = session.rpartition(".")
    issued = body.partition(".")[0]
    if not hmac.compare_digest(mac.encode(), _mac(token, "session", body).encode()):
        return False
    return issued.isdigit() and 0 <= now - int(issued) <= SESSION_TTL_S


def csrf_token(token: str, session: str) -> str:
    """The CSRF token of `session`: what the page's forms carry."""
    return _mac(token, "csrf", session)


def csrf_valid(token: str, session: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), csrf_token(token, session).encode())


def same_origin(headers: dict[str, str]) -> bool:
    """A browser request from this very origin (or not from a browser at all): the
    `Origin` header, when sent, names the `Host` asked for; `Sec-Fetch-Site`, when sent,
    says same-origin."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    return origin is None or origin == f"http://{headers.get('host', '')}"


def session_cookie(value: str, max_age_s: int = SESSION_TTL_S) -> tuple[str, str]:
    """The `Set-Cookie` header of a session (`max_age_s=0` with an empty value: log out)."""
    return ("Set-Cookie", f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict")
