"""``X-Forwarded-*`` from the proxies the operator trusts (``SLUICE_TRUSTED_PROXIES``; off by default).

Behind a TLS-terminating proxy the API sees ``http`` and the proxy's upstream host, so the URLs it builds
(the ``Link`` header of every list) would point there. When the peer (``REMOTE_ADDR``) is a trusted proxy,
the request is taken as that proxy describes it: ``X-Forwarded-Proto`` → scheme, ``-Host`` → host,
``-Port`` → port, ``-Prefix`` → script root, ``-For`` → client address. Each proxy in a chain appends its
own value, so the number of trusted hops (the peer, then every trusted address at the right end of
``X-Forwarded-For``) says which value to read, counted from the right — werkzeug's ``ProxyFix`` does the
rest. A request from any other peer is served as it came, its ``X-Forwarded-*`` ignored: anybody can send
those headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 16  # a chain longer than this is read as 16 trusted hops


class ForwardedHeaders:
    """WSGI middleware: apply ``X-Forwarded-*`` only for requests whose peer is in ``trusted``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], trusted: Iterable[str]) -> None:
        self.app = app
        self._trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(each, strict=False) for each in trusted)
        self._fixers = {hops: ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
                        for hops in range(1, MAX_HOPS + 1)}

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def trusted_hops(self, environ: dict[str, Any]) -> int:
        """How many proxies at the end of the chain are trusted: 0 unless the peer itself is."""
        if not self.is_trusted(environ.get("REMOTE_ADDR") or ""):
            return 0
        hops = 1
        forwarded_for = [part for part in (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",") if part.strip()]
        for address in reversed(forwarded_for[1:]):  # the leftmost entry is the client, never a hop
            if hops == MAX_HOPS or not self.is_trusted(address):
                break
            hops += 1
        return hops

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        hops = self.trusted_hops(environ)
        if hops == 0:
            return self.app(environ, start_response)
        return self._fixers[hops](environ, start_response)  # type: ignore[no-any-return]
