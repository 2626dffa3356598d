"""``X-Forwarded-*`` behind a TLS-terminating proxy: honoured only from the peers named in
``SLUICE_TRUSTED_PROXIES`` (off by default), so the ``Link`` headers point at the public URL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from api.app import create_app
from api.forwarded import ForwardedHeaders
from shared.config import Settings
from tests.integration.jobs_support import create

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "jobs.example.com", "X-Forwarded-Port": "443",
             "X-Forwarded-For": "203.0.113.9"}


@pytest.fixture()
def proxied_app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings.with_overrides(trusted_proxies=("10.0.0.0/8", "fd00::1/128")))
    application.testing = True
    yield application
    application.extensions["sluice"].close()


def _links(client, auth, peer: str, path: str) -> str:  # type: ignore[no-untyped-def]
    response = client.get(path, headers={**auth, **FORWARDED}, environ_base={"REMOTE_ADDR": peer})
    assert response.status_code == 200, response.get_json()
    return str(response.headers["Link"])


@pytest.mark.parametrize("path", ["/v1/jobs?limit=1", "/v1/jobs?limit=1&enabled=true"])  # front layer, Flask
def test_a_trusted_proxy_sets_the_links_scheme_and_host(proxied_app, auth, path) -> None:  # type: ignore[no-untyped-def]
    client = proxied_app.test_client()
    for slug in ("one", "two"):
        create(client, auth, slug)
    assert _links(client, auth, "10.1.2.3", path).startswith("<https://jobs.example.com/v1/jobs?")
    assert _links(client, auth, "fd00::1", path).startswith("<https://jobs.example.com/v1/jobs?")
    assert _links(client, auth, "192.0.2.10", path).startswith("<http://localhost/v1/jobs?")  # not trusted


def test_forwarded_headers_are_ignored_by_default(client, auth) -> None:  # type: ignore[no-untyped-def]
    for slug in ("one", "two"):
        create(client, auth, slug)
    assert _links(client, auth, "10.1.2.3", "/v1/jobs?limit=1").startswith("<http://localhost/v1/jobs?")
    assert _links(client, auth, "127.0.0.1", "/v1/jobs?limit=1&enabled=true").startswith("<http://localhost/")


def test_trusted_hops_count_only_trusted_proxies_at_the_end_of_the_chain() -> None:
    middleware = ForwardedHeaders(lambda environ, start: [], ["10.0.0.0/8"])

    def hops(peer: str, chain: str = "") -> int:
        return middleware.trusted_hops({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": chain})

    assert hops("192.0.2.1", "10.0.0.2") == 0  # an untrusted peer: nothing is believed
    assert hops("10.0.0.1") == 1
    assert hops("10.0.0.1", "198.51.100.7") == 1
    assert hops("10.0.0.1", "198.51.100.7, 10.0.0.2") == 2
    assert hops("10.0.0.1", "10.9.9.9, 198.51.100.7, 10.0.0.2") == 2  # a trusted address left of a stranger
    assert hops("10.0.0.1", "10.0.0.3") == 1  # the leftmost entry is the client, never a hop
    assert hops("not-an-ip", "10.0.0.3") == 0


def test_the_setting_reads_addresses_and_ranges() -> None:
    from shared.errors import ConfigError

    assert Settings.from_env({"DATABASE_URL": "postgresql://db/sluice"}).trusted_proxies == ()
    parsed = Settings.from_env({"DATABASE_URL": "postgresql://db/sluice",
                                "SLUICE_TRUSTED_PROXIES": " 10.0.0.7/8, 127.0.0.1 ,::1,"}).trusted_proxies
    assert parsed == ("10.0.0.0/8", "127.0.0.1/32", "::1/128")
    with pytest.raises(ConfigError, match="SLUICE_TRUSTED_PROXIES"):
        Settings.from_env({"DATABASE_URL": "postgresql://db/sluice", "SLUICE_TRUSTED_PROXIES": "proxy.internal"})
