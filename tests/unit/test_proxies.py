"""Which calls go through a proxy: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY as requests reads them."""

from __future__ import annotations

import pytest

from shared.egress.proxies import ProxyRoutes
from shared.errors import ConfigError

PROXY = "http://proxy.corp:3128"


def routes(**env: str) -> ProxyRoutes:
    return ProxyRoutes.from_env(env)


def test_no_proxy_variables_means_direct() -> None:
    assert routes().proxy_for("https://api.example.com/x") is None


def test_proxy_per_scheme_and_all_as_the_fallback() -> None:
    both = routes(HTTPS_PROXY=PROXY, HTTP_PROXY="http://plain:8080", ALL_PROXY="http://any:1")
    assert both.proxy_for("https://api.example.com/x") == PROXY
    assert both.proxy_for("http://api.example.com/x") == "http://plain:8080"
    assert routes(ALL_PROXY="http://any:1").proxy_for("https://api.example.com/x") == "http://any:1"
    assert routes(HTTPS_PROXY=PROXY).proxy_for("http://api.example.com/x") is None


def test_lowercase_wins_and_an_empty_lowercase_value_turns_it_off() -> None:
    assert routes(https_proxy="http://lower:1", HTTPS_PROXY="http://upper:1").proxy_for("https://a.b/") == (
        "http://lower:1")
    assert routes(https_proxy="", HTTPS_PROXY="http://upper:1").proxy_for("https://a.b/") is None


def test_a_proxy_without_scheme_is_http() -> None:
    assert routes(HTTPS_PROXY="proxy.corp:3128").proxy_for("https://a.b/") == PROXY


def test_http_proxy_is_ignored_under_cgi() -> None:
    assert routes(HTTP_PROXY=PROXY, REQUEST_METHOD="GET").proxy_for("http://a.b/") is None


@pytest.mark.parametrize(("no_proxy", "url", "direct"), [
    ("example.com", "https://example.com/x", True),
    ("example.com", "https://api.example.com/x", True),
    (".example.com", "https://api.example.com/x", True),
    ("example.com", "https://notexample.com/x", False),
    ("example.com:8443", "https://example.com:8443/x", True),
    ("example.com:8443", "https://example.com/x", False),
    ("10.0.0.0/8", "https://10.1.2.3/x", True),
    ("10.0.0.0/8", "https://11.1.2.3/x", False),
    ("192.168.1.5", "https://192.168.1.5/x", True),
    ("fd00::/8", "https://[fd12::1]/x", True),
    ("*", "https://anything.example/x", True),
    (" a.test , EXAMPLE.COM ", "https://example.com/x", True),
    ("", "https://example.com/x", False),
])
def test_no_proxy_matching(no_proxy: str, url: str, direct: bool) -> None:
    route = routes(HTTPS_PROXY=PROXY, NO_PROXY=no_proxy).proxy_for(url)
    assert (route is None) is direct


@pytest.mark.parametrize("value", ["socks5://proxy:1080", "http://", "http://[::1", "http://proxy:port",
                                   "http://proxy:99999", "http://proxy:0", "socks5://user:s3cret@proxy:1080"])
def test_a_proxy_sluice_cannot_use_stops_the_process(value: str) -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY: expected an http:// or https:// proxy URL") as caught:
        routes(HTTPS_PROXY=value)
    assert "s3cret" not in caught.value.message
