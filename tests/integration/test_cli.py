"""The ``sluice`` console script's own behaviour: one-line errors for a wrong or unreachable database, and
commands that run no process role load none of the process packages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import pg_url
from tests.integration.process_support import free_port


def sluice(args: list[str], database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "shared.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("args", [["db", "upgrade"], ["keys", "list"], ["worker"], ["scheduler"], ["api"]])
def test_an_unreachable_database_stops_every_command_with_one_line(args: list[str]) -> None:
    url = f"postgresql://sluice:s3cret@127.0.0.1:{free_port()}/sluice"
    line = one_line(sluice(args, url))
    assert line.startswith("sluice: cannot connect to PostgreSQL at postgresql://sluice:***@127.0.0.1:")
    assert "(DATABASE_URL)" in line and "refused" in line and "s3cret" not in line


def test_a_sqlite_url_is_refused_with_one_line() -> None:
    line = one_line(sluice(["keys", "list"], "sqlite:///sluice.db"))
    assert line.startswith("sluice: DATABASE_URL: PostgreSQL is required")


def test_a_missing_database_url_names_the_default_it_tried() -> None:
    result = sluice(["keys", "list"], None)
    if result.returncode == 0:
        pytest.skip("a database named sluice answers on 127.0.0.1:5432 here")
    assert "postgresql://127.0.0.1:5432/sluice (DATABASE_URL)" in one_line(result)


def test_keys_list_loads_no_process_package(db_engine) -> None:  # type: ignore[no-untyped-def]
    code = ("import sys; from shared.cli.main import main; code = main(['keys', 'list']); "
            "print(sorted(m for m in ('flask', 'dramatiq', 'gunicorn', 'api', 'worker', 'scheduler') "
            "if m in sys.modules)); sys.exit(code)")
    env = {**os.environ, "DATABASE_URL": pg_url()}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_keys_list_shows_every_column_but_the_key(session_factory, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from shared.apikeys import create_key, parse_scopes
    from shared.cli.main import main
    from shared.db.engine import transaction
    from shared.db.models import ApiKey

    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    used = datetime(2026, 2, 3, 4, 5, 6, 789, tzinfo=UTC)
    with transaction(session_factory) as s:
        named, plaintext = create_key(s, project_id="cli-proj", scopes=parse_scopes("runs:read"), name="nightly ETL",
                                      now=created)
        unnamed, _ = create_key(s, project_id="cli-proj", scopes=parse_scopes("*"), name=None, now=created)
        s.execute(sa.update(ApiKey).where(ApiKey.id == named.id).values(last_used_at=used))
    monkeypatch.setenv("DATABASE_URL", pg_url())
    assert main(["keys", "list", "--project", "cli-proj"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "project", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {named.id, unnamed.id}
    assert "nightly ETL" in by_id[named.id] and "2026-02-03T04:05:06.000789Z" in by_id[named.id]
    assert by_id[unnamed.id].split()[2] == "-" and by_id[unnamed.id].split()[-2:] == ["-", "-"]
    assert plaintext not in "\n".join(rows) and plaintext[3:] not in "\n".join(rows)
