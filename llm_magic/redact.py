"""Secrets cut out of what is shown: the credentials a URL can carry (`user:password@`,
`?api_key=…`), a bearer token, and any known secret (a key read from the environment).

Every rendering of an error (its card, `--verbose`, `%llm_tb`) and every URL shown or
recorded goes through here: a traceback quotes the line of the cell, and the line may hold
a URL with a password in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

HIDDEN = "***"

# Query parameters that carry a secret, as services name them.
_SECRET_PARAMS = (
    r"api[-_]?key|apikey|key|token|access[-_]?token|auth|authorization|password|passwd|pwd"
    r"|secret|client[-_]?secret|sig|signature|code"
)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
_PARAM = re.compile(
    rf"(?P<name>[?&;](?:{_SECRET_PARAMS})=)(?!{re.escape(HIDDEN)})(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<name>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every URL's user:password, secret-bearing query values, bearer tokens
    and the given `secrets` replaced by ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # a 1-3 character "secret" would blank ordinary text
            text = text.replace(secret, HIDDEN)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    text = _PARAM.sub(lambda m: f"{m['name']}{HIDDEN}", text)
    return _BEARER.sub(lambda m: f"{m['name']}{HIDDEN}", text)


def url_credentials(url: str) -> list[str]:
    """What credentials `url` carries, in words ("a user name and password", "a key in
    its query (api_key)"), without their values; empty when none."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
        has_user = parts.username is not None
    except ValueError:  # a port that is not a number: no credentials to read here
        return []
    found = []
    if has_password:
        found.append("a user name and password")
    elif has_user:
        found.append("a user name")
    secret = re.compile(rf"^(?:{_SECRET_PARAMS})$", re.IGNORECASE)
    names = [n for n, _ in parse_qsl(parts.query, keep_blank_values=True) if secret.match(n)]
    if names:
        found.append(f"a key in its query ({', '.join(names)})")
    return found


def without_credentials(url: str) -> str:
    """The URL with its user:password and secret-bearing query parameters left out."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return public_url(url)
    secret = re.compile(rf"^(?:{_SECRET_PARAMS})$", re.IGNORECASE)
    query = "&".join(
        f"{name}={value}" if value else name
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not secret.match(name)
    )
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def public_url(url: str) -> str:
    """The URL without user:password and with secret query values hidden: safe to show
    and record."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact(url)
    if parts.username is None and parts.password is None:
        return redact(url)
    netloc = host + (f":{port}" if port else "")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
