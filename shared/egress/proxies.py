"""Which outbound calls go through an HTTP proxy: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``.

Read once per process from the environment and matched the way ``requests`` (and curl) match them:
lowercase names win over uppercase, ``NO_PROXY`` entries match a host or any of its subdomains (a leading
dot is optional, ``host:port`` entries match that port only), an IP address also matches an entry in CIDR
form, and ``*`` turns proxying off. Under CGI (``REQUEST_METHOD`` set) ``HTTP_PROXY`` is ignored, because
a client can set it through a ``Proxy:`` request header.

Behind a proxy, the egress policy is the proxy's too: Sluice still resolves and checks the destination
before every call, but the proxy makes the final lookup and connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.urls import split_url

_SCHEMES = ("http", "https", "all")


def _read(env: Mapping[str, str]) -> dict[str, str]:
    """``{"http"|"https"|"all"|"no": value}`` from ``*_proxy`` variables, lowercase names winning."""
    found: dict[str, str] = {}
    for name, value in env.items():  # any case first ...
        key = name.lower()
        if key.endswith("_proxy") and value:
            found[key[: -len("_proxy")]] = value
    for name, value in env.items():  # ... then lowercase overrides, an empty one included
        if name.endswith("_proxy") and name == name.lower():
            if value:
                found[name[: -len("_proxy")]] = value
            else:
                found.pop(name[: -len("_proxy")], None)
    if "REQUEST_METHOD" in env:
        found.pop("http", None)
    return found


def _proxy_url(variable: str, value: str) -> str:
    url = value if "://" in value else f"http://{value}"
    parts = split_url(url)
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.port == 0:
        shown = "***@" + value.rsplit("@", 1)[1] if "@" in value else value  # never the proxy's password
        raise ConfigError(f"{variable}: expected an http:// or https:// proxy URL, got {shown!r}")
    return url


@dataclass(frozen=True)
class ProxyRoutes:
    """Proxy URL per scheme (``http``, ``https``, ``all``) and the ``NO_PROXY`` entries (lowercased)."""

    proxies: Mapping[str, str]
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxyRoutes:
        """Raises ``ConfigError`` for a proxy that is not an http(s) URL (SOCKS is not supported)."""
        found = _read(env)
        proxies = {scheme: _proxy_url(f"{scheme.upper()}_PROXY", found[scheme]) for scheme in _SCHEMES
                   if scheme in found}
        no_proxy = tuple(entry.strip().lower() for entry in found.get("no", "").split(",") if entry.strip())
        return cls(proxies, no_proxy)

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL to send ``url`` through, or None for a direct connection."""
        if not self.proxies:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        if not host or self._bypassed(host, parts.port):
            return None
        return self.proxies.get(parts.scheme.lower()) or self.proxies.get("all")

    def _bypassed(self, host: str, port: int | None) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        with_port = f"{host}:{port}" if port else host
        for entry in self.no_proxy:
            if entry == "*":
                return True
            if address is not None and "/" in entry:
                try:
                    if address in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = entry.lstrip(".").strip("[]")
            if name in (host, with_port) or host.endswith(f".{name}") or with_port.endswith(f".{name}"):
                return True
        return False
