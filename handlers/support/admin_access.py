"""Who may use the admin API (rooms, participants, bans).

With ADMIN_SECRET set: `Authorization: Bearer <ADMIN_SECRET>`, compared in constant
time (401 without it, 403 when wrong). Without one the admin API is off (404), except
in development for this server's own page, opened on localhost: zero configuration
for a developer, and nothing for another origin, another machine or a script.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest

from ground.config import Config
from ground.credentials import bearer_credential, secret_matches
from ground.errors import ApiError
from handlers.support.origins import same_origin

# Sent by the demo page with every admin call. A page on another origin cannot send a
# custom header without a CORS preflight, which the admin API never grants.
PAGE_HEADER = "X-Requested-With"


def admin_caller(config: Config, request: HTTPServerRequest) -> str:
    """Who is calling (for the admin events' `by`), or ApiError 401/403/404."""
    if config.admin_secret:
        given = bearer_credential(request.headers.get("Authorization", ""))
        if not given:
            raise ApiError(
                401,
                "The admin API needs Authorization: Bearer <ADMIN_SECRET>",
                {"WWW-Authenticate": "Bearer"},
            )
        if not secret_matches(given, config.admin_secret):
            raise ApiError(403, "Wrong admin secret")
        return "admin"
    if config.app_env == "development" and is_own_page_request(request, config):
        return "demo page"
    raise ApiError(404, admin_api_off(config))


def page_admin_mode(config: Config, request: HTTPServerRequest) -> str:
    """What the demo page's rooms panel is to do, told in the page: `key` (ask for
    ADMIN_SECRET), `page` (the zero-config own page, as seen from where it is opened)
    or `off`; the API checks each call all the same."""
    if config.admin_secret:
        return "key"
    on_localhost = _is_loopback_host(request.host) and _is_loopback_address(request.remote_ip)
    return "page" if config.app_env == "development" and on_localhost else "off"


def admin_api_off(config: Config) -> str:
    if config.app_env == "development":
        return (
            "The admin API is off: set ADMIN_SECRET to use it (without one, only this "
            "server's own page opened on localhost may)"
        )
    return "The admin API is off: set ADMIN_SECRET to use it"


def is_own_page_request(request: HTTPServerRequest, config: Config, websocket: bool = False) -> bool:
    """This server's own page, on a loopback host, from this machine: what the
    zero-config development mode rests on.

    - the Host is a loopback name or address, and so is the client: not another
      machine, and not a DNS-rebound name (Host and Origin both an attacker's);
    - the Origin is this server's own (handlers/support/origins.py; browsers always send it on
      WebSockets and on requests other than GET); a GET without Origin needs
      `Sec-Fetch-Site: same-origin`, which pages cannot set;
    - HTTP requests carry the custom header PAGE_HEADER, which forms cannot send and
      other origins' scripts cannot send without a preflight that is never granted.
    """
    if not (_is_loopback_host(request.host) and _is_loopback_address(request.remote_ip)):
        return False
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        if websocket or fetch_site != "same-origin":
            return False
    elif not same_origin(origin, request, config):
        return False
    return websocket or bool(request.headers.get(PAGE_HEADER))


def _is_loopback_host(host: str) -> bool:
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:  # not a host at all, such as an unclosed "[::1"
        return False
    return name == "localhost" or name.endswith(".localhost") or _is_loopback_address(name)


def _is_loopback_address(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False
