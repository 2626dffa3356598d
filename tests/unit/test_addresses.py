"""Outbound address policy (CONTRACT §10.1); pure: every lookup goes to a fake resolver, never DNS."""

from __future__ import annotations

import pytest

from shared.egress.addresses import (
    STRICT,
    AddressPolicy,
    AddressRefused,
    ResolutionFailed,
    check_url_for_write,
    is_public_address,
    resolve_checked,
    strip_userinfo,
)
from shared.errors import BadRequest

OPEN = AddressPolicy(allow_private=True)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


class FakeResolver:
    """Answers from a table, records every lookup; unknown hosts fail like NXDOMAIN."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise ResolutionFailed(f"cannot resolve {host}")
        return self.table[host]


def refusal(url: str, resolver: FakeResolver | None = None) -> str:
    """The 400 message check_url_for_write raises for ``url`` (fails the test if it accepts)."""
    with pytest.raises(BadRequest) as info:
        check_url_for_write("endpoint_url", url, policy=STRICT, resolver=resolver or FakeResolver())
    return info.value.message


# One sample per refused range of §10.1, plus its boundary neighbours where a slip is likely.
REFUSED = [
    "127.0.0.1", "127.255.255.254", "::1",  # loopback
    "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fc00::1", "fd12:3456::1",  # private
    "169.254.169.254", "fe80::1", "febf::1",  # link-local (incl. cloud metadata)
    "100.64.0.1", "100.127.255.255",  # CGNAT
    "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",  # multicast
    "0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.19.255.255", "198.51.100.7",
    "203.0.113.9", "240.0.0.1", "255.255.255.255", "::", "2001:db8::1", "fec0::1",  # unspecified, reserved
]
PUBLIC = [
    PUBLIC_V4, "8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0",
    "169.253.255.255", "192.0.1.1", "198.17.255.255", "198.20.0.1", "223.255.255.255", PUBLIC_V6,
    "2001:4860:4860::8888",
]
EMBEDDED_PRIVATE = [
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:7f00:1",  # IPv4-mapped
    "::127.0.0.1", "::a9fe:a9fe",  # IPv4-compatible (169.254.169.254)
    "64:ff9b::127.0.0.1", "64:ff9b::a00:1",  # NAT64
    "2002:7f00:1::", "2002:c0a8:0101::1",  # 6to4 (127.0.0.1, 192.168.1.1)
    "::ffff:0:127.0.0.1", "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
    "64:ff9b:1::7f00:1", "64:ff9b:1:0:808:808::",  # local-use NAT64: refused whatever it embeds
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1",  # Teredo: refused whatever it embeds
]
EMBEDDED_PUBLIC = ["::ffff:8.8.8.8", "::8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1", "::ffff:0:8.8.8.8"]


@pytest.mark.parametrize("ip", REFUSED + EMBEDDED_PRIVATE)
def test_refused_addresses(ip: str) -> None:
    assert not is_public_address(ip)


@pytest.mark.parametrize("ip", PUBLIC + EMBEDDED_PUBLIC)
def test_public_addresses(ip: str) -> None:
    assert is_public_address(ip)


@pytest.mark.parametrize("junk", ["", "not-an-ip", "1.2.3", "::g"])
def test_unparseable_address_is_not_public(junk: str) -> None:
    assert not is_public_address(junk)


def _in_url(ip: str) -> str:
    return f"http://[{ip}]:8080/hook" if ":" in ip else f"http://{ip}:8080/hook"


@pytest.mark.parametrize("ip", REFUSED + EMBEDDED_PRIVATE)
def test_private_literal_refused_without_resolving(ip: str) -> None:
    resolver = FakeResolver()
    reason = ("a cloud metadata endpoint" if ip in ("169.254.169.254", "::a9fe:a9fe", "::ffff:0:a9fe:a9fe")
              else "a private address")
    assert refusal(_in_url(ip), resolver) == f"endpoint_url: host is {reason}"
    with pytest.raises(AddressRefused):
        resolve_checked(_in_url(ip), policy=STRICT, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("ip", [PUBLIC_V4, PUBLIC_V6, "::ffff:8.8.8.8"])
def test_public_literal_accepted_without_resolving(ip: str) -> None:
    resolver = FakeResolver()
    check_url_for_write("endpoint_url", _in_url(ip), policy=STRICT, resolver=resolver)
    host, port, addresses = resolve_checked(_in_url(ip), policy=STRICT, resolver=resolver)
    assert (host, port) == (ip, 8080)
    assert len(addresses) == 1 and is_public_address(addresses[0])
    assert resolver.calls == []


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.LocalHost.",
    "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",  # full-width, NFKC-folds to localhost
])
def test_localhost_refused_without_resolving(host: str) -> None:
    # Even a resolver claiming a public address is not consulted.
    resolver = FakeResolver({host.lower(): [PUBLIC_V4], host.lower().rstrip("."): [PUBLIC_V4]})
    assert refusal(f"https://{host}/x", resolver) == "endpoint_url: host is localhost"
    with pytest.raises(AddressRefused, match="localhost"):
        resolve_checked(f"https://{host}/x", policy=STRICT, resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("host", [
    "0177.0.0.1", "0x7f.0.0.1", "0x7f.1", "0x7F000001", "2130706433", "127.1", "127.0.1", "10.1",
    "127.000.000.001", "010.0.0.1", "1.2.3.4.5", "127.0.0.1.",
])
def test_non_canonical_ipv4_refused(host: str) -> None:
    resolver = FakeResolver({host: [PUBLIC_V4]})
    message = refusal(f"http://{host}/", resolver)
    assert message in ("endpoint_url: non-canonical IPv4 address", "endpoint_url: host is a private address")
    with pytest.raises(AddressRefused):
        resolve_checked(f"http://{host}/", policy=STRICT, resolver=resolver)
    assert resolver.calls == []


def test_canonical_quad_with_trailing_dot_is_a_literal() -> None:
    # Every parser reads "8.8.8.8." as 8.8.8.8, so it is judged as that literal, not resolved.
    resolver = FakeResolver()
    assert resolve_checked("http://8.8.8.8./", policy=STRICT, resolver=resolver)[2] == ["8.8.8.8"]
    assert refusal("http://127.0.0.1./", resolver) == "endpoint_url: host is a private address"
    assert resolver.calls == []


def test_full_width_digits_fold_to_the_literal() -> None:
    full_width_loopback = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"  # "127.0.0.1"
    assert refusal(f"http://{full_width_loopback}/") == "endpoint_url: host is a private address"


def test_non_canonical_forms_message() -> None:
    assert refusal("http://0x7f.1/") == "endpoint_url: non-canonical IPv4 address"
    assert refusal("http://2130706433/") == "endpoint_url: non-canonical IPv4 address"


def test_hostname_resolving_to_public_is_accepted_and_returned() -> None:
    resolver = FakeResolver({"api.example.com": [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]})
    check_url_for_write("webhook_url", "https://API.Example.com/x", policy=STRICT, resolver=resolver)
    result = resolve_checked("https://API.Example.com/x", policy=STRICT, resolver=resolver)
    assert result == ("api.example.com", 443, [PUBLIC_V4, PUBLIC_V6])
    assert resolver.calls == [("api.example.com", 443), ("api.example.com", 443)]  # once per check


@pytest.mark.parametrize("answer", [
    [PUBLIC_V4, "10.0.0.5"], ["127.0.0.1"], [PUBLIC_V6, "::ffff:192.168.0.1"], ["fe80::1%eth0"], ["garbage"],
])
def test_host_with_any_private_address_refused(answer: list[str]) -> None:
    resolver = FakeResolver({"mixed.example.com": answer})
    message = refusal("http://mixed.example.com/", resolver)
    assert message == "endpoint_url: host resolves to a private address"
    assert all(ip not in message for ip in answer)  # resolved addresses are never disclosed
    with pytest.raises(AddressRefused, match="private"):
        resolve_checked("http://mixed.example.com/", policy=STRICT, resolver=resolver)


def test_unresolvable_host_accepted_at_write_but_fails_at_call() -> None:
    resolver = FakeResolver()
    check_url_for_write("endpoint_url", "https://nowhere.invalid/", policy=STRICT, resolver=resolver)
    with pytest.raises(ResolutionFailed):
        resolve_checked("https://nowhere.invalid/", policy=STRICT, resolver=resolver)


def test_resolver_oserror_and_empty_answer_are_resolution_failures() -> None:
    def broken(host: str, port: int) -> list[str]:
        raise OSError("network unreachable")

    check_url_for_write("endpoint_url", "https://x.example/", policy=STRICT, resolver=broken)
    with pytest.raises(ResolutionFailed):
        resolve_checked("https://x.example/", policy=STRICT, resolver=broken)
    with pytest.raises(ResolutionFailed):
        resolve_checked("https://x.example/", policy=STRICT, resolver=FakeResolver({"x.example": []}))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/", "http://localhost/", "http://[::1]/", "http://10.0.0.1/", "http://0x7f.1/",
    "http://internal.corp/",
])
def test_allow_private_accepts_at_write_without_resolving(url: str) -> None:
    resolver = FakeResolver()
    check_url_for_write("endpoint_url", url, policy=OPEN, resolver=resolver)
    assert resolver.calls == []


def test_allow_private_still_resolves_once_at_call() -> None:
    resolver = FakeResolver({"internal.corp": ["10.1.2.3"], "localhost": ["127.0.0.1", "::1"]})
    assert resolve_checked("http://internal.corp/", policy=OPEN, resolver=resolver) == (
        "internal.corp", 80, ["10.1.2.3"])
    assert resolve_checked("http://localhost:9000/", policy=OPEN, resolver=resolver) == (
        "localhost", 9000, ["127.0.0.1", "::1"])
    assert resolve_checked("http://[::1]/", policy=OPEN, resolver=resolver) == ("::1", 80, ["::1"])
    assert resolver.calls == [("internal.corp", 80), ("localhost", 9000)]
    with pytest.raises(ResolutionFailed):
        resolve_checked("http://gone.corp/", policy=OPEN, resolver=resolver)


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/", "must use http or https"),
    ("file:///etc/passwd", "must use http or https"),
    ("gopher://127.0.0.1:6379/_", "must use http or https"),
    ("example.com/path", "must use http or https"),
    ("http:///path", "must include a host"),
    ("https://", "must include a host"),
    ("http://user@:80/", "must include a host"),
    ("http://[::1/", "is not a valid URL"),
    ("http://example.com:99999/", "is not a valid URL"),
    ("http://example.com:0/", "is not a valid URL"),
    ("http://example.com\\@127.0.0.1/", "must not contain whitespace, control characters or backslashes"),
    ("http://exa mple.com/", "must not contain whitespace, control characters or backslashes"),
    ("http://example.com\t/", "must not contain whitespace, control characters or backslashes"),
])
@pytest.mark.parametrize("allow_private", [False, True])
def test_scheme_and_host_problems(url: str, message: str, allow_private: bool) -> None:
    resolver = FakeResolver({"example.com": [PUBLIC_V4]})
    with pytest.raises(BadRequest) as info:
        check_url_for_write("fallback_endpoint_url", url, policy=AddressPolicy(allow_private=allow_private),
                            resolver=resolver)
    assert info.value.message == f"fallback_endpoint_url: {message}"
    assert info.value.status_code == 400
    with pytest.raises(AddressRefused, match=message.split(",")[0]):
        resolve_checked(url, policy=AddressPolicy(allow_private=allow_private), resolver=resolver)


def test_default_ports_and_uppercase_scheme() -> None:
    resolver = FakeResolver({"example.com": [PUBLIC_V4]})
    assert resolve_checked("HTTP://example.com", policy=STRICT, resolver=resolver)[1] == 80
    assert resolve_checked("https://example.com/a?b#c", policy=STRICT, resolver=resolver)[1] == 443
    assert resolve_checked("https://example.com:8443", policy=STRICT, resolver=resolver)[1] == 8443


def test_userinfo_does_not_hide_the_real_host() -> None:
    resolver = FakeResolver({"example.com": [PUBLIC_V4]})
    assert refusal("http://example.com@127.0.0.1/", resolver) == "endpoint_url: host is a private address"
    assert resolve_checked("http://127.0.0.1@example.com/", policy=STRICT, resolver=resolver)[0] == (
        "example.com")


@pytest.mark.parametrize(("url", "stripped"), [
    ("https://user:pw@h/x", "https://h/x"),
    ("https://user@h:8443/x?q=1", "https://h:8443/x?q=1"),
    ("http://u:p@ss@h/x", "http://h/x"),
    ("https://h/x?next=a@b", "https://h/x?next=a@b"),
    ("https://h/a@b", "https://h/a@b"),
    ("https://h/x", "https://h/x"),
    ("http://user:pw@[::1/", "http://[::1/"),  # malformed for urlsplit, still stripped
])
def test_strip_userinfo(url: str, stripped: str) -> None:
    assert strip_userinfo(url) == stripped


# The allowlist (SLUICE_ALLOWED_PRIVATE_ENDPOINTS) and the cloud metadata endpoints.
METADATA_LITERALS = ["169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "::ffff:169.254.169.254",
                     "192.0.0.192", "169.254.0.23"]
INTERNAL = FakeResolver({"db.corp": ["10.1.2.3"], "api.svc.cluster.local": ["10.96.0.10"],
                         "evil.example": ["169.254.169.254"], "metadata.google.internal": ["169.254.169.254"],
                         "mixed.corp": ["10.1.2.3", "192.168.0.9"], "public.example": [PUBLIC_V4]})


def _policy(*entries: str, switch: bool = False) -> AddressPolicy:
    return AddressPolicy.parse(switch, entries)


@pytest.mark.parametrize("switch", [False, True])
@pytest.mark.parametrize("ip", METADATA_LITERALS)
def test_metadata_literals_refused_even_with_the_switch_on(ip: str, switch: bool) -> None:
    policy = _policy("169.254.0.0/16", "100.64.0.0/10", "fd00::/8", "192.0.0.0/24", switch=switch)
    with pytest.raises(BadRequest) as info:
        check_url_for_write("webhook_url", _in_url(ip), policy=policy, resolver=FakeResolver())
    assert info.value.message == "webhook_url: host is a cloud metadata endpoint"
    with pytest.raises(AddressRefused, match="cloud metadata"):
        resolve_checked(_in_url(ip), policy=policy, resolver=FakeResolver())


@pytest.mark.parametrize("switch", [False, True])
@pytest.mark.parametrize("host", ["metadata.google.internal", "METADATA.google.internal.", "metadata.goog",
                                  "instance-data.ec2.internal"])
def test_metadata_host_names_refused_without_resolving(host: str, switch: bool) -> None:
    resolver = FakeResolver({"metadata.google.internal": [PUBLIC_V4]})
    with pytest.raises(AddressRefused, match="cloud metadata endpoint"):
        resolve_checked(f"http://{host}/computeMetadata/v1/", policy=_policy(switch=switch), resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("switch", [False, True])
def test_a_name_resolving_to_metadata_is_refused_at_call_time(switch: bool) -> None:
    policy = _policy("evil.example", "169.254.0.0/16", switch=switch)  # a named host or a network is not enough
    with pytest.raises(AddressRefused, match="resolves to a cloud metadata address"):
        resolve_checked("http://evil.example/", policy=policy, resolver=INTERNAL)


def test_metadata_allowed_only_when_named_exactly() -> None:
    by_address = _policy("169.254.169.254")
    assert resolve_checked("http://169.254.169.254/latest/", policy=by_address)[2] == ["169.254.169.254"]
    assert resolve_checked("http://evil.example/", policy=by_address, resolver=INTERNAL)[2] == ["169.254.169.254"]
    with pytest.raises(AddressRefused):  # another metadata address is still refused
        resolve_checked("http://100.100.100.200/", policy=by_address)
    by_name = _policy("metadata.google.internal")
    assert resolve_checked("http://metadata.google.internal/", policy=by_name, resolver=INTERNAL)[2] == [
        "169.254.169.254"]
    with pytest.raises(AddressRefused):  # the name is allowed, not the address behind any other name
        resolve_checked("http://evil.example/", policy=by_name, resolver=INTERNAL)


def test_allowlisted_network_opens_only_its_addresses() -> None:
    policy = _policy("10.0.0.0/8")
    check_url_for_write("endpoint_url", "http://10.9.8.7:8080/", policy=policy)
    assert resolve_checked("http://db.corp/", policy=policy, resolver=INTERNAL)[2] == ["10.1.2.3"]
    assert resolve_checked("http://[::ffff:10.1.2.3]/", policy=policy)[2] == ["::ffff:a01:203"]
    with pytest.raises(AddressRefused, match="private address"):  # one address outside taints the host
        resolve_checked("http://mixed.corp/", policy=policy, resolver=INTERNAL)
    with pytest.raises(BadRequest, match="host is a private address"):
        check_url_for_write("endpoint_url", "http://192.168.1.1/", policy=policy)
    with pytest.raises(BadRequest, match="host is localhost"):
        check_url_for_write("endpoint_url", "http://localhost/", policy=policy)
    assert resolve_checked("http://public.example/", policy=policy, resolver=INTERNAL)[2] == [PUBLIC_V4]


def test_allowlisted_host_names_and_domains() -> None:
    policy = _policy("mixed.corp", "*.svc.cluster.local", "localhost")
    assert resolve_checked("http://MIXED.corp/", policy=policy, resolver=INTERNAL)[2] == ["10.1.2.3", "192.168.0.9"]
    assert resolve_checked("http://api.svc.cluster.local/", policy=policy, resolver=INTERNAL)[2] == ["10.96.0.10"]
    check_url_for_write("endpoint_url", "http://localhost:9000/", policy=policy, resolver=FakeResolver())
    with pytest.raises(AddressRefused):  # the domain entry covers names under it, not others
        resolve_checked("http://db.corp/", policy=policy, resolver=INTERNAL)
    with pytest.raises(AddressRefused):
        resolve_checked("http://svc.cluster.local.evil.example/", policy=policy,
                        resolver=FakeResolver({"svc.cluster.local.evil.example": ["10.0.0.1"]}))


def test_switch_on_still_accepts_private_without_resolving_at_write() -> None:
    resolver = FakeResolver()
    check_url_for_write("endpoint_url", "http://internal.corp/", policy=_policy(switch=True), resolver=resolver)
    check_url_for_write("endpoint_url", "http://10.0.0.1/", policy=_policy(switch=True), resolver=resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "http://x.example", "bad host", "*", "-x.example"])
def test_bad_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        AddressPolicy.parse(False, [entry])
