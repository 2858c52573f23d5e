"""Is a browser request from this server's own page? For WS /events (and the admin API's CSRF check);
and was a request sent to this server's own host (GET /events/history).

A page is this server's own when its origin is listed in PUBLIC_ORIGINS, or when it was
served from an IP address, `localhost` or the SERVER_HOST name and is the very host and
port (and, behind a trusted proxy, scheme) this request was sent to. Any other name is
refused even when Host agrees: DNS rebinding points an attacker's name at this server,
and the browser then sends that name as both Origin and Host. An IP address or
`localhost` cannot be rebound, so those need no configuration.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import tornado.web

from ground.config import DEFAULT_PORTS, Config, Origin, canonical_host, parse_origin

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

log = logging.getLogger("handlers.origins")  # the name it has always logged under

_HINTS_MAX = 64
_hinted: set[str] = set()


def request_host(request: HTTPServerRequest, config: Config) -> tuple[str, int | None]:
    """The host and port (None: the scheme's default) the client sent this request to:
    X-Forwarded-Host when the proxy is trusted and sends it, else Host."""
    host = request.headers.get("Host", "")
    if config.trust_proxy_headers:
        # A list when proxies are chained: the last one was set by the proxy next to us.
        host = request.headers.get("X-Forwarded-Host", "").split(",")[-1].strip() or host
    try:
        parts = urlsplit("//" + host)
        return canonical_host(parts.hostname or ""), parts.port
    except ValueError:
        return "", None


def same_origin(origin: str, request: HTTPServerRequest, config: Config) -> bool:
    """True when `origin` (a request's Origin header) is a page of this server."""
    page = parse_origin(origin)
    if page is None:
        return False
    if page in _public_origins(config):
        return True
    scheme, host, port = page
    own_host, own_port = request_host(request, config)
    if host != own_host:
        return False  # someone else's page: the access log has the 403
    if not _cannot_be_rebound(host, config):
        _hint(origin, "a name is trusted only when PUBLIC_ORIGINS lists it; add it there if it is ours")
        return False
    # TLS ends at the proxy: only a trusted proxy tells the scheme the browser used
    # (X-Forwarded-Proto, applied by Tornado's xheaders). Untrusted, host and port decide:
    # one port speaks one protocol.
    own_scheme = request.protocol if config.trust_proxy_headers else scheme
    if own_scheme != scheme:
        _hint(origin, f"the proxy says this request came over {own_scheme} (X-Forwarded-Proto)")
        return False
    if (own_port or DEFAULT_PORTS[scheme]) != port:
        if own_port is None:
            _hint(origin, "the Host header has no port: a proxy in front drops it (nginx: Host $http_host)")
        return False
    return True


UNKNOWN_HOST = "Not a host of this server: an IP address, localhost, or a name listed in PUBLIC_ORIGINS"


def known_host(request: HTTPServerRequest, config: Config) -> bool:
    """True when the request was sent to a host this server answers for as itself. A GET
    from a DNS-rebound page carries no Origin, only the attacker's name as Host: endpoints
    whose answer names participants check this."""
    host, _ = request_host(request, config)
    if _cannot_be_rebound(host, config):
        return True
    return any(public_host == host for _, public_host, _ in _public_origins(config))


class EveryOriginChecked(tornado.web.RequestHandler):
    """Tornado (6.6) decides without asking check_origin when Origin matches Host or
    Sec-Fetch-Site says same-origin, which is exactly what a DNS-rebound page sends.
    Here every request that carries an Origin is put to the check."""

    def _check_cross_origin(self, check: Callable[[str], bool]) -> str | None:
        origin = self.request.headers.get("Origin")
        if origin is None or check(origin):
            return None  # no Origin: not a browser, which could send any Origin anyway
        return f"Origin {origin!r} not allowed"


def _public_origins(config: Config) -> list[Origin]:
    return [page for page in map(parse_origin, config.public_origins) if page is not None]


def _cannot_be_rebound(host: str, config: Config) -> bool:
    """An IP address, or a name an attacker's DNS cannot answer for."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost" or (host != "" and host == config.server_host.lower())


def _hint(origin: str, why: str) -> None:
    # Once per origin and reason (bounded): the likely misconfigurations, said where they show.
    message = f"Refused a page at {origin!r} that asked for this server's own host: {why}"
    if message not in _hinted and len(_hinted) < _HINTS_MAX:
        _hinted.add(message)
        log.warning("%s", message)
