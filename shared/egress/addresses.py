"""Outbound address policy (CONTRACT §10.1): which URLs Sluice may call, checked at write and call time.

Call time (``resolve_checked``) resolves exactly once and returns the checked addresses, so the caller
connects to one of them without a second lookup (DNS rebinding cannot redirect it). The resolver is
injected so tests never touch the network. Ranges are listed explicitly rather than delegated to
``ipaddress.is_global``, whose answers have changed between Python versions.

The operator's ``AddressPolicy``: the switch (``SLUICE_ALLOW_PRIVATE_ENDPOINTS``) opens every private
address; the allowlist (``SLUICE_ALLOWED_PRIVATE_ENDPOINTS``) opens only the networks and host names it
lists. Cloud metadata endpoints stay refused either way unless the allowlist names that very address (not
a network around it) or that metadata host name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeAlias
from urllib.parse import urlsplit

from shared.errors import semantic

Resolver: TypeAlias = Callable[[str, int], list[str]]
"""``(host, port) -> IP address strings``; raises ``ResolutionFailed`` (or ``OSError``) when it cannot."""

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_REFUSED_V4 = [ipaddress.IPv4Network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # loopback, private
    "169.254.0.0/16", "100.64.0.0/10", "224.0.0.0/4",  # link-local, CGNAT, multicast
    "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",  # unspecified, reserved
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
)]
_REFUSED_V6 = [ipaddress.IPv6Network(n) for n in (  # loopback, unspecified, unique-local, link-local,
    "::1/128", "::/128", "fc00::/7", "fe80::/10",  # multicast, documentation, deprecated site-local
    "ff00::/8", "2001:db8::/32", "fec0::/10",
    # Tunnels and translators whose far end is not written plainly in the address: Teredo (the client's
    # IPv4 address is obfuscated and the relay is anyone's) and local-use NAT64 (a network-specific prefix
    # that translates to whatever IPv4 network its operator chose).
    "2001::/32", "64:ff9b:1::/48",
)]
# Instance metadata services (credentials, user data): AWS (IPv4, IPv6, ECS task endpoints), GCP, Azure,
# OpenStack, DigitalOcean (169.254.169.254), Alibaba Cloud (100.100.100.200), Oracle Cloud's former
# 192.0.0.192, Tencent Cloud (169.254.0.23).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "169.254.0.23", "100.100.100.200", "192.0.0.192",
    "fd00:ec2::254", "fd00:ec2::23",
))
METADATA_HOSTS: frozenset[str] = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.tencentyun.com", "metadata.azure.internal",
})
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (SIIT): ::ffff:0:a.b.c.d
# The last dot-separated label of a host that resolvers (inet_aton) would read as an IPv4 number.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0[xX][0-9a-fA-F]*)$")
# urlsplit and HTTP clients disagree on backslashes and silently drop tabs/newlines: refuse them outright
# so the host we check is the host that gets called.
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class AddressRefused(Exception):
    """The policy refuses this destination; ``str()`` is a human reason safe to show the job's owner."""


class ResolutionFailed(Exception):
    """The host did not resolve at call time (the worker records error class ``connection``)."""


IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AddressPolicy:
    """Which destinations may be private. ``networks`` and ``hosts`` come from the allowlist: a network
    (or single address) whose addresses may be called, a host name whose addresses may be private
    (``*.example.internal`` for every name under a domain). Build it with ``AddressPolicy.parse``."""

    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()  # ".example.internal" for the entry "*.example.internal"
    addresses: frozenset[IPAddress] = field(default=frozenset())  # entries naming one address exactly

    @classmethod
    def parse(cls, allow_private: bool, entries: Iterable[str]) -> AddressPolicy:
        """The policy for the switch and the allowlist's entries; ``ValueError`` names a bad entry."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        domains: list[str] = []
        addresses: set[IPAddress] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=True)
            except ValueError:
                if "/" in entry:
                    raise ValueError(f"{entry!r} is not a network (host bits set?)") from None
                network = None
            if network is not None:
                networks.append(network)
                if network.num_addresses == 1:
                    addresses.add(network.network_address)
                continue
            wildcard = entry.startswith("*.")
            name = _allowlisted_name(entry[2:] if wildcard else entry)
            if name is None:
                raise ValueError(f"{entry!r} is neither a network, an address nor a host name")
            if wildcard:
                domains.append("." + name)
            else:
                hosts.add(name)
        return cls(allow_private, tuple(networks), frozenset(hosts), tuple(domains), frozenset(addresses))

    def names_host(self, bare: str) -> bool:
        """True when the allowlist names this host (exactly, or under a ``*.`` domain)."""
        return bare in self.hosts or any(bare.endswith(domain) for domain in self.domains)

    def allows_address(self, addr: IPAddress, host_named: bool, metadata_host_named: bool) -> bool:
        """May Sluice connect to ``addr``, reached through a host the allowlist names (or not)?"""
        inner = _embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
        if addr in METADATA_ADDRESSES or inner in METADATA_ADDRESSES:
            return metadata_host_named or addr in self.addresses or inner in self.addresses
        if self.allow_private or host_named or _is_public(addr):
            return True
        return any(candidate in network for network in self.networks for candidate in (addr, inner)
                   if candidate is not None and candidate.version == network.version)


def _allowlisted_name(name: str) -> str | None:
    """A host name as the policy compares it (lowercase IDNA, no trailing dot), or None if it is not one."""
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_name.split(".")
    if not ascii_name or any(not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", label) for label in labels):
        return None
    return ascii_name


STRICT = AddressPolicy()  # the default: public addresses only


@dataclass(frozen=True)
class _Target:
    host: str  # what gets resolved: lowercase ASCII (IDNA), brackets removed, trailing dot kept
    bare: str  # host without trailing dots, for classification
    port: int
    literal: IPAddress | None


def is_public_address(ip: str) -> bool:
    """True when ``ip`` is globally routable unicast per §10.1; unparseable input is not (fail closed).

    IPv4 embedded in IPv6 (mapped, compatible, translated, NAT64, 6to4) is unwrapped and judged as IPv4;
    Teredo and local-use NAT64 prefixes are refused whole.
    """
    try:
        return _is_public(ipaddress.ip_address(ip))
    except ValueError:
        return False


def _is_public(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        addr = _embedded_ipv4(addr) or addr
    if isinstance(addr, ipaddress.IPv4Address):
        return not any(addr in net for net in _REFUSED_V4)
    return not any(addr in net for net in _REFUSED_V6)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, compatible, translated (SIIT), NAT64 or 6to4 address reaches, else None."""
    # ::/96 also holds :: and ::1; unwrapped they land in 0/8 and are refused either way.
    if addr in _IPV4_COMPATIBLE or addr in _NAT64 or addr in _SIIT:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.ipv4_mapped or addr.sixtofour


# ``user:password@`` after the scheme: also applied in SQL (PostgreSQL's regular expressions read it the same).
USERINFO_PATTERN = r"^([A-Za-z][A-Za-z0-9+.-]*:)?//[^/?#]*@"
_USERINFO = re.compile(USERINFO_PATTERN)


@lru_cache(maxsize=1024)  # per attempt on the worker (the attempt_started event); a job's URLs repeat
def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``, for quoting URLs in errors and logs.

    Textual, so it also works on URLs too malformed for ``urlsplit``: ``https://u:pw@h/x`` -> ``https://h/x``.
    """
    return _USERINFO.sub(r"\1//", url, count=1)


@lru_cache(maxsize=1024)  # per endpoint call; a job's URLs repeat (a refused URL is not cached: it raises)
def _parse(url: str) -> _Target:
    """Split ``url`` into what the policy checks; raise ``AddressRefused`` for shape problems."""
    if _UNSAFE_CHARS.search(url):
        raise AddressRefused("must not contain whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:  # bad brackets, non-numeric or out-of-range port
        raise AddressRefused("is not a valid URL") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise AddressRefused("must use http or https")
    if not hostname or not hostname.strip("."):
        raise AddressRefused("must include a host")
    if port == 0:
        raise AddressRefused("is not a valid URL")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        # Same normalisation the resolver applies (NFKC, full-width dots), so "ｌｏｃａｌｈｏｓｔ" and
        # "１２７.０.０.１" are classified as what they resolve to.
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = hostname  # cannot be encoded, so cannot resolve either; left for resolution to fail
    bare = host.rstrip(".")
    try:
        literal: IPAddress | None = ipaddress.ip_address(bare)
    except ValueError:
        literal = None
    return _Target(host=host, bare=bare, port=port, literal=literal)


def _static_refusal(target: _Target, policy: AddressPolicy) -> str | None:
    """Reason to refuse without resolving, or None."""
    named = policy.names_host(target.bare)
    if target.bare in METADATA_HOSTS and not named:
        return "host is a cloud metadata endpoint"
    if target.literal is not None:
        if policy.allows_address(target.literal, False, False):
            return None
        return "host is a cloud metadata endpoint" if _is_metadata(target.literal) else "host is a private address"
    if policy.allow_private or named:
        return None
    if target.bare == "localhost" or target.bare.endswith(".localhost"):
        return "host is localhost"
    if _NUMERIC_LABEL.fullmatch(target.bare.rsplit(".", 1)[-1]):
        # Canonical dotted quads parsed as literals above; anything else numeric (0177.0.0.1, 0x7f.1,
        # 2130706433, 127.1) means different things to different parsers, so it is never allowed.
        return "non-canonical IPv4 address"
    return None


def _is_metadata(addr: IPAddress) -> bool:
    inner = _embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
    return addr in METADATA_ADDRESSES or inner in METADATA_ADDRESSES


def lookup_target(url: str) -> tuple[str, int] | None:
    """The (host, port) a write-time check of ``url`` resolves, or ``None`` when it resolves nothing (an IP
    literal, localhost, or a URL refused for its shape)."""
    try:
        target = _parse(url)
    except AddressRefused:
        return None
    if target.literal is not None or _static_refusal(target, AddressPolicy()) is not None:
        return None
    return target.host, target.port


def default_resolver(host: str, port: int) -> list[str]:
    """Resolve with ``socket.getaddrinfo`` (blocking; bounded only by the system resolver's timeouts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ResolutionFailed(f"cannot resolve host {host!r}") from exc
    return [str(info[4][0]) for info in infos]


def _resolve(target: _Target, resolver: Resolver | None) -> list[str]:
    """Resolve once; unique addresses in resolver order. Raises ``ResolutionFailed``."""
    try:
        found = (resolver or default_resolver)(target.host, target.port)
    except OSError as exc:
        raise ResolutionFailed(f"cannot resolve host {target.host!r}") from exc
    if not found:
        raise ResolutionFailed(f"host {target.host!r} has no addresses")
    return list(dict.fromkeys(found))


def check_url_for_write(field: str, url: str, *, policy: AddressPolicy,
                        resolver: Resolver | None = None) -> None:
    """Validate a URL a client is storing (create, PATCH, batch, clone); raise a 400 naming ``field``.

    Messages: ``"<field>: must use http or https"``, ``"<field>: host is localhost"``,
    ``"<field>: host resolves to a private address"``, ... Resolved addresses are never quoted, so the
    error cannot be used to map internal DNS. An unresolvable host is accepted (§10.1). With the switch
    on, nothing is resolved: only the URL itself is judged (a literal or a metadata host name).
    """
    try:
        if policy.allow_private:
            reason = _static_refusal(_parse(url), policy)
            if reason is not None:
                raise AddressRefused(reason)
        else:
            resolve_checked(url, policy=policy, resolver=resolver)
    except ResolutionFailed:
        return  # nothing shows it private (§10.1); the call-time check will see it again
    except AddressRefused as exc:
        raise semantic(field, str(exc)) from None


def resolve_checked(url: str, *, policy: AddressPolicy,
                    resolver: Resolver | None = None) -> tuple[str, int, list[str]]:
    """Call-time check: ``(host, port, addresses)`` where every address passed the policy.

    Resolves exactly once (a literal is not resolved); connect only to one of the returned addresses.
    ``host`` is the normalised (lowercase, IDNA) name for ``Host``/SNI. Raises ``AddressRefused`` when the
    URL or any address is refused (one bad address taints the host), ``ResolutionFailed`` when it does
    not resolve.
    """
    target = _parse(url)
    reason = _static_refusal(target, policy)
    if reason is not None:
        raise AddressRefused(reason)
    if target.literal is not None:
        return target.host, target.port, [str(target.literal)]
    addresses = _resolve(target, resolver)
    named = policy.names_host(target.bare)
    metadata_named = named and target.bare in METADATA_HOSTS
    for ip in addresses:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            raise AddressRefused("host resolves to a private address") from None
        if not policy.allows_address(addr, named, metadata_named):
            raise AddressRefused("host resolves to a cloud metadata address" if _is_metadata(addr)
                                 else "host resolves to a private address")
    return target.host, target.port, addresses
