"""The HTTP API as the ``sluice jobs|runs|dlq`` commands call it: where (``--url`` / ``SLUICE_URL``), with
which key (``--api-key`` / ``SLUICE_API_KEY``), and every failure turned into one line and an exit code.

Without a key, a command aimed at this machine uses the key ``sluice dev`` saved in ``.sluice/dev-key`` of
the current directory, so that the first session needs no copy and paste. A key is never read from a file
for another host.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import requests

from shared.cli import exit_codes
from shared.errors import ConfigError
from shared.urls import split_url

DEFAULT_URL = "http://127.0.0.1:8080"
DEV_KEY_FILE = Path(".sluice") / "dev-key"
DEFAULT_TIMEOUT_SECS = 30.0
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class CommandFailure(Exception):
    """A command that cannot succeed (a refused request, a wrong option): ``message`` is the line to print,
    ``exit_code`` the process's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """The options every API command takes."""
    parser.add_argument("--url", default=None, help=f"the Sluice API (default SLUICE_URL, else {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None,
                        help="API key (default SLUICE_API_KEY; against this machine, .sluice/dev-key if present)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECS, metavar="SECS",
                        help=f"give up on a request after SECS seconds (default {DEFAULT_TIMEOUT_SECS:g})")


@dataclass(frozen=True)
class ApiTarget:
    url: str
    api_key: str
    timeout_secs: float

    @classmethod
    def resolve(cls, args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> ApiTarget:
        """From the options, else the environment, else the defaults; ``ConfigError`` when unusable."""
        url = (args.url or env.get("SLUICE_URL") or DEFAULT_URL).strip().rstrip("/")
        parts = split_url(url)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
            raise ConfigError(f"SLUICE_URL: expected the API's address like {DEFAULT_URL}, got {url!r}")
        key = (args.api_key or env.get("SLUICE_API_KEY") or "").strip()
        dev_key = cwd / DEV_KEY_FILE
        if not key and _is_loopback(parts.hostname) and dev_key.is_file():
            key = dev_key.read_text().strip()
        if not key:
            raise ConfigError("no API key: set SLUICE_API_KEY or pass --api-key "
                              "(create one with `sluice keys create --project <project>`)")
        if args.timeout <= 0:
            raise ConfigError("--timeout must be a positive number of seconds")
        return cls(url=url, api_key=key, timeout_secs=args.timeout)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


class ApiClient:
    """One ``requests`` session to the API; each method returns the decoded body or raises ``CommandFailure``."""

    def __init__(self, target: ApiTarget) -> None:
        self.target = target
        self._session = requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {target.api_key}",
                                      "User-Agent": f"sluice-cli/{package_version()}"})

    def close(self) -> None:
        self._session.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._call("GET", path, params=params).json()

    def page(self, path: str, params: Mapping[str, Any] | None = None) -> Page:
        response = self._call("GET", path, params=params)
        return Page(items=response.json(), next_cursor=response.headers.get("X-Next-Cursor"))

    def post(self, path: str, body: Any = None) -> Any:
        return self._call("POST", path, body=body).json()

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              body: Any = None) -> requests.Response:
        url = f"{self.target.url}{path}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._session.request(method, url, params=query, json=body,
                                             timeout=self.target.timeout_secs)
        except requests.Timeout:
            raise CommandFailure(f"no answer from {self.target.url} within {self.target.timeout_secs:g} s "
                             "(--timeout)", exit_codes.UNAVAILABLE) from None
        except requests.RequestException as exc:
            raise CommandFailure(f"cannot reach the Sluice API at {self.target.url} (SLUICE_URL): {_reason(exc)}; "
                             "is `sluice api` or `sluice dev` running there?", exit_codes.UNAVAILABLE) from None
        if response.status_code >= 400:
            raise failure_of(response, self.target.url)
        try:
            response.json()
        except ValueError:
            raise CommandFailure(f"{self.target.url} answered {method} {path} with something other than JSON; "
                             "is SLUICE_URL the Sluice API?", exit_codes.UNAVAILABLE) from None
        return response


def _reason(exc: requests.RequestException) -> str:
    """The operating system's words inside ``requests``' nested message (``Connection refused``)."""
    found = _ERRNO.findall(str(exc))
    if found:
        return str(found[-1]).strip().lower()
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS failure"
    return type(exc).__name__


def failure_of(response: requests.Response, base_url: str) -> CommandFailure:
    """The one line and exit code of an error answer (the API's error body, or whatever the server sent)."""
    status = response.status_code
    try:
        body = response.json()
        message = str(body.get("message") or response.reason)
        details = _flatten(body.get("errors") or {})
    except (ValueError, AttributeError):
        return CommandFailure(f"{base_url} answered {status} {response.reason} with something other than Sluice's "
                          "error body; is SLUICE_URL the Sluice API?", exit_codes.UNAVAILABLE)
    line = f"{message} ({status})" + (f": {'; '.join(details)}" if details else "")
    if status == 401:
        return CommandFailure(f"{line}; check SLUICE_API_KEY or --api-key", exit_codes.AUTH)
    if status == 403:
        return CommandFailure(line, exit_codes.AUTH)
    if status == 404:
        return CommandFailure(line, exit_codes.NOT_FOUND)
    if status >= 500:
        return CommandFailure(line, exit_codes.UNAVAILABLE)
    return CommandFailure(line, exit_codes.REFUSED)


def _flatten(errors: Any, prefix: str = "") -> list[str]:
    """A 422's ``errors`` tree as ``field: message`` strings (``items.3.payload: ...``)."""
    if isinstance(errors, Mapping):
        found: list[str] = []
        for key, value in errors.items():
            found += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return found
    if isinstance(errors, list):
        return [f"{prefix}: {message}" if prefix else str(message) for message in errors]
    return [f"{prefix}: {errors}"]


def package_version() -> str:
    try:
        return version("sluice")
    except PackageNotFoundError:
        return "unknown"
