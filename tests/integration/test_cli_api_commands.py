"""``sluice jobs|runs|dlq``: the CLI over a real HTTP API (PostgreSQL, Redis, a worker runner calling a local
endpoint): aligned tables, ``--json``, ``watch`` until the run ends, and the documented exit codes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy.orm import Session, sessionmaker

from shared.cli import exit_codes
from shared.cli.echo import EchoEndpoint
from shared.cli.main import main
from tests.conftest import make_key
from tests.integration.process_support import free_port
from tests.integration.runner_harness import Harness


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture()
def echo() -> Iterator[EchoEndpoint]:
    endpoint = EchoEndpoint(0)
    yield endpoint
    endpoint.stop()


@pytest.fixture()
def sluice(api_url: str, session_factory: sessionmaker[Session],
           capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    key = make_key(session_factory)

    def run(*args: str, api_key: str | None = None) -> Result:
        capsys.readouterr()
        code = main([*args, "--url", api_url, "--api-key", api_key or key])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    run.key = key  # type: ignore[attr-defined]
    return run


def create_job(api_url: str, key: str, slug: str, endpoint_url: str, **fields: object) -> dict[str, object]:
    body = {"name": slug.title(), "slug": slug, "endpoint_url": endpoint_url, **fields}
    response = requests.post(f"{api_url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def one_line(result: Result, code: int) -> str:
    assert result.code == code, (result.code, result.err)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    assert result.err.startswith("sluice: ")
    return result.err


def execute_soon(harness: Harness, api_url: str, key: str) -> threading.Thread:
    """A worker's turn for the newest queued run, as soon as one exists (while the CLI watches)."""
    def work() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            runs = requests.get(f"{api_url}/v1/runs", params={"status": "queued"},
                                headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
            if runs:
                time.sleep(0.3)  # the watcher has printed the queued state
                harness.handle(runs[0]["id"])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_jobs_list_get_and_a_trigger_watched_until_it_completes(
        sluice: Callable[..., Result], api_url: str, echo: EchoEndpoint, harness: Harness) -> None:
    key = sluice.key  # type: ignore[attr-defined]
    create_job(api_url, key, "hello", echo.url)
    create_job(api_url, key, "nightly-report", echo.url, cron="0 3 * * *", timezone="Europe/Paris")

    listed = sluice("jobs", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["SLUG", "NAME", "ENABLED", "SCHEDULE", "VERSION", "ENDPOINT"]
    assert rows[0].split()[:2] == ["nightly-report", "Nightly-Report"] and "0 3 * * * (Europe/Paris)" in rows[0]
    assert rows[1].split()[:3] == ["hello", "Hello", "yes"]
    assert {row.index(echo.url) for row in rows} == {header.index("ENDPOINT")}  # aligned columns
    as_json = sluice("jobs", "list", "--json")
    assert [job["slug"] for job in json.loads(as_json.out)] == ["nightly-report", "hello"]

    shown = sluice("jobs", "get", "hello")
    assert shown.code == 0 and "endpoint_url" in shown.out and echo.url in shown.out
    assert "no finished runs in 7d" in shown.out

    worker = execute_soon(harness, api_url, key)
    watched = sluice("jobs", "trigger", "hello", "--payload", '{"greeting": "hi"}', "--watch", "--interval", "0.1")
    worker.join()
    assert watched.code == exit_codes.OK, watched.err
    lines = watched.out.splitlines()
    run_id = lines[0].split()[1]
    assert lines[0] == f"run {run_id} queued"
    assert any("created -> queued" in line for line in lines)
    assert any("attempt 1 calls " + echo.url in line for line in lines)
    assert any("attempt 1 success: HTTP 200 in " in line for line in lines)
    assert lines[-1] == f"run {run_id} completed after 1 attempt(s)"

    detail = sluice("runs", "get", run_id, "--json")
    run = json.loads(detail.out)
    assert run["status"] == "completed" and run["result"]["received"] == {"greeting": "hi"}
    assert sorted(event["type"] for event in run["events"]) == [
        "attempt_finished", "attempt_started", "state_change", "state_change", "state_change"]
    people = sluice("runs", "get", run_id)
    fields = dict(line.split(None, 1) for line in people.out.split("\n\n")[0].splitlines())
    assert fields["job"] == "hello" and fields["status"] == "completed" and fields["attempt"] == "1"
    assert fields["idempotency_key"] == "-" and fields["duration"].endswith(" ms")
    assert '"greeting": "hi"' in people.out
    timeline = people.out.split("events:\n")[1].splitlines()
    assert timeline[0].split()[2:] == ["state_change", "created", "->", "queued"]

    runs = sluice("runs", "list", "--job", "hello", "--status", "completed", "--since", "1h")
    header, row = runs.out.splitlines()
    assert header.split() == ["ID", "JOB", "STATUS", "ATTEMPT", "TRIGGER", "CREATED", "DURATION"]
    assert row.split()[:5] == [run_id, "hello", "completed", "1", "manual"]
    assert sluice("runs", "list", "--status", "failed").out == ""


def test_a_failed_run_exits_1_and_is_replayed_from_the_dead_letters(
        sluice: Callable[..., Result], api_url: str, echo: EchoEndpoint, harness: Harness) -> None:
    key = sluice.key  # type: ignore[attr-defined]
    create_job(api_url, key, "flaky", echo.url + "?status=500", max_attempts=1)
    worker = execute_soon(harness, api_url, key)
    watched = sluice("jobs", "trigger", "flaky", "--watch", "--interval", "0.1")
    worker.join()
    assert watched.code == exit_codes.RUN_NOT_COMPLETED, watched.err
    run_id = watched.out.splitlines()[0].split()[1]
    assert watched.out.splitlines()[-1].startswith(f"run {run_id} failed after 1 attempt(s): ")
    assert sluice("runs", "watch", run_id).code == exit_codes.RUN_NOT_COMPLETED  # already ended: at once

    dead = sluice("dlq", "list")
    header, row = dead.out.splitlines()
    assert header.split()[:5] == ["ID", "JOB", "STATUS", "ATTEMPTS", "FINISHED"]
    assert row.split()[:4] == [run_id, "flaky", "failed", "1"]

    replayed = sluice("dlq", "replay", run_id, "--json")
    assert replayed.code == exit_codes.OK, replayed.err
    [result] = json.loads(replayed.out)
    assert result["status"] == "replayed" and result["original_run_id"] == run_id
    again = sluice("runs", "replay", result["new_run_id"])  # not finished yet: the API refuses
    assert one_line(again, exit_codes.REFUSED) == "sluice: run is queued; only terminal runs can be replayed (409)\n"
    missing = sluice("dlq", "replay", "0190f3c2-0000-7000-8000-000000000000")
    assert missing.code == exit_codes.NOT_FOUND and "not_found" in missing.out


def test_disable_enable_and_cancel(sluice: Callable[..., Result], api_url: str, echo: EchoEndpoint) -> None:
    key = sluice.key  # type: ignore[attr-defined]
    create_job(api_url, key, "hello", echo.url)
    assert sluice("jobs", "disable", "hello").out == "job hello disabled\n"
    refused = sluice("jobs", "trigger", "hello")
    assert "job is disabled" in one_line(refused, exit_codes.REFUSED)
    unknown = sluice("jobs", "enable", "hello", "nope")
    assert one_line(unknown, exit_codes.NOT_FOUND).startswith("sluice: job nope: ")
    still = sluice("jobs", "list", "--disabled").out.splitlines()[1:]  # the unknown slug changed nothing
    assert [row.split()[:3] for row in still] == [["hello", "Hello", "no"]]
    assert sluice("jobs", "enable", "hello").code == exit_codes.OK

    delayed = sluice("jobs", "trigger", "hello", "--delay", "3600", "--tag", "team=ops", "--json")
    run = json.loads(delayed.out)
    assert run["status"] == "delayed" and run["tags"] == {"team": "ops"}
    assert sluice("runs", "cancel", run["id"]).out == f"run {run['id']} canceled\n"
    twice = sluice("runs", "cancel", run["id"])
    assert one_line(twice, exit_codes.REFUSED) == f"sluice: run {run['id']}: run is already canceled (409)\n"


def test_pages_follow_the_cursor(sluice: Callable[..., Result], api_url: str, echo: EchoEndpoint) -> None:
    key = sluice.key  # type: ignore[attr-defined]
    for slug in ("a", "b", "c"):
        create_job(api_url, key, slug, echo.url)
    first = sluice("jobs", "list", "--limit", "2")
    assert [line.split()[0] for line in first.out.splitlines()[1:]] == ["c", "b"]
    cursor = first.err.strip().removeprefix("more: add --cursor ")
    second = sluice("jobs", "list", "--limit", "2", "--cursor", cursor)
    assert [line.split()[0] for line in second.out.splitlines()[1:]] == ["a"] and second.err == ""


def test_every_failure_is_one_line_with_its_exit_code(
        sluice: Callable[..., Result], api_url: str, session_factory: sessionmaker[Session],
        capsys: pytest.CaptureFixture[str], echo: EchoEndpoint) -> None:
    key = sluice.key  # type: ignore[attr-defined]
    create_job(api_url, key, "hello", echo.url)
    unknown = "0190f3c2-0000-7000-8000-000000000000"
    assert one_line(sluice("runs", "get", unknown), exit_codes.NOT_FOUND) == "sluice: run not found (404)\n"
    assert one_line(sluice("jobs", "get", "nope"), exit_codes.NOT_FOUND)
    other_project = make_key(session_factory, "proj-b")
    assert one_line(sluice("jobs", "get", "hello", api_key=other_project), exit_codes.NOT_FOUND)
    revoked = "sk_" + "0" * 64
    assert "check SLUICE_API_KEY" in one_line(sluice("jobs", "list", api_key=revoked), exit_codes.AUTH)
    read_only = make_key(session_factory, scopes="jobs:read")
    assert "missing scope jobs:trigger" in one_line(sluice("jobs", "trigger", "hello", api_key=read_only),
                                                    exit_codes.AUTH)
    bad_payload = sluice("jobs", "trigger", "hello", "--payload", "{nope")
    assert one_line(bad_payload, exit_codes.USAGE).startswith("sluice: --payload: not JSON")
    deep_payload = sluice("jobs", "trigger", "hello", "--payload", "[" * 3000 + "]" * 3000)
    assert one_line(deep_payload, exit_codes.USAGE) == "sluice: --payload: nested deeper than 128 levels\n"
    invalid = sluice("jobs", "trigger", "hello", "--priority", "11")
    assert "priority: " in one_line(invalid, exit_codes.REFUSED) and "(422)" in invalid.err
    assert one_line(sluice("runs", "list", "--since", "yesterday"), exit_codes.USAGE)

    capsys.readouterr()
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["runs", "list", "--url", closed, "--api-key", key]) == exit_codes.UNAVAILABLE
    err = capsys.readouterr().err
    assert err == f"sluice: cannot reach the Sluice API at {closed} (SLUICE_URL): connection refused; " \
                  "is `sluice api` or `sluice dev` running there?\n"
    assert main(["runs", "list", "--url", "http://api.example.com"]) == exit_codes.USAGE  # no key anywhere
    assert capsys.readouterr().err.startswith("sluice: no API key: set SLUICE_API_KEY or pass --api-key")
    for malformed in ("http://[::1", "http://127.0.0.1:99999", "http://api:port", "ftp://api", "api.example.com"):
        capsys.readouterr()
        assert main(["runs", "list", "--url", malformed, "--api-key", key]) == exit_codes.USAGE
        assert capsys.readouterr().err == \
            f"sluice: SLUICE_URL: expected the API's address like http://127.0.0.1:8080, got {malformed!r}\n"
