"""The ``sluice`` console script's own behaviour: one-line errors with the fix for a missing, wrong,
unreachable or unmigrated database and for malformed settings, and commands that run no process role load
none of the process packages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from shared.cli.main import main
from shared.config import Settings
from tests.conftest import PG_ADMIN_URL, PG_DB_NAME, pg_url
from tests.integration.process_support import free_port

ROLES_AND_KEYS = [["keys", "list"], ["worker"], ["scheduler"], ["api"]]


def sluice(args: list[str], database_url: str | None, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("SLUICE_")}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(settings)
    return subprocess.run([sys.executable, "-m", "shared.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def sluice_here(args: list[str], database_url: str | None, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str], **settings: str) -> subprocess.CompletedProcess[str]:
    """``sluice`` in this process (the checks run before any role starts): faster than a new interpreter."""
    for name in [name for name in os.environ if name == "DATABASE_URL" or name.startswith("SLUICE_")]:
        monkeypatch.delenv(name)
    for name, value in {**settings, **({"DATABASE_URL": database_url} if database_url else {})}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


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
    assert line.endswith("; is PostgreSQL running at 127.0.0.1:" + line.split(":")[-1].split("?")[0] + "?\n")


@pytest.mark.parametrize("url", ["sqlite:///sluice.db", "mysql://root:secret@db/sluice"])
def test_another_database_is_refused_with_one_line(url: str) -> None:
    line = one_line(sluice(["keys", "list"], url))
    assert line.startswith("sluice: DATABASE_URL: PostgreSQL is required") and "secret" not in line


def test_database_url_is_required_outside_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "shared.cli.main", "scheduler"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
    assert one_line(result).startswith("sluice: DATABASE_URL is not set: point it at PostgreSQL")
    monkeypatch.chdir(tmp_path)
    for args in [["db", "upgrade"], *ROLES_AND_KEYS]:
        line = one_line(sluice_here(args, None, monkeypatch, capsys))
        assert line.startswith("sluice: DATABASE_URL is not set: point it at PostgreSQL"), args
    assert list(tmp_path.iterdir()) == []  # no database file appears


@pytest.mark.parametrize(("settings", "expected"), [
    ({"SLUICE_STALE_AFTER_SECS": "abc"}, "sluice: SLUICE_STALE_AFTER_SECS must be a whole number of seconds, "
                                         "got 'abc'\n"),
    ({"SLUICE_HEARTBEAT_INTERVAL_SECS": "40"}, "sluice: SLUICE_STALE_AFTER_SECS (60) must be at least 2 x "
                                               "SLUICE_HEARTBEAT_INTERVAL_SECS (40), i.e. >= 80: "),
])
def test_a_malformed_setting_stops_every_command_with_one_line(
        settings: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert one_line(sluice(["worker"], pg_url(), **settings)).startswith(expected)
    for args in ROLES_AND_KEYS:
        assert one_line(sluice_here(args, pg_url(), monkeypatch, capsys, **settings)).startswith(expected), args


@pytest.fixture()
def unmigrated_url(pg_engine: sa.Engine) -> Iterator[str]:
    """A database of its own without the schema (``sluice db upgrade`` never ran there)."""
    name = f"{PG_DB_NAME}_unmigrated"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) PRIMARY KEY)"))
        conn.execute(sa.text("DELETE FROM alembic_version"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    engine.dispose()


def test_a_schema_behind_the_code_stops_every_command_and_readyz(
        unmigrated_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected = (f"sluice: PostgreSQL at {unmigrated_url} (DATABASE_URL): the database has no Sluice schema yet; "
                "run `sluice db upgrade`\n")  # the test URL has no password to hide
    assert one_line(sluice(["keys", "list"], unmigrated_url)) == expected
    for args in ROLES_AND_KEYS:
        assert one_line(sluice_here(args, unmigrated_url, monkeypatch, capsys)) == expected, args
    set_revision(unmigrated_url, "0001")
    line = one_line(sluice_here(["api"], unmigrated_url, monkeypatch, capsys))
    assert line.endswith("the schema is at revision 0001, older than this release's "
                         f"{current_head()}; run `sluice db upgrade`\n")

    from api.app import create_app

    app: Flask = create_app(settings.with_overrides(database_url=unmigrated_url))
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["checks"] == {"database": "outdated", "redis": "ok"}
        assert "run `sluice db upgrade`" in response.get_json()["message"]
        set_revision(unmigrated_url, "a-newer-release")  # migrated by a newer release: this one keeps serving
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        app.extensions["sluice"].close()


def current_head() -> str:
    from shared.db.schema_version import ShippedSchema

    return ", ".join(sorted(ShippedSchema.load().heads))


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


def test_an_unreachable_or_malformed_redis_stops_every_role_with_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    line = one_line(sluice(["scheduler"], pg_url(), REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0"))
    assert line.startswith(f"sluice: cannot connect to Redis at redis://***@127.0.0.1:{port}/0 (REDIS_URL): ")
    assert line.endswith(f"Connection refused; is Redis running at 127.0.0.1:{port}?\n") and "s3cret" not in line
    for args in (["worker"], ["api"]):
        monkeypatch.setenv("REDIS_URL", "localhost:6379")
        assert one_line(sluice_here(args, pg_url(), monkeypatch, capsys)).startswith(
            "sluice: REDIS_URL: Redis URL must specify one of the following schemes"), args
    for malformed in ("redis://:s3cret@[::1/0", "redis://:s3cret@127.0.0.1:port/0"):
        monkeypatch.setenv("REDIS_URL", malformed)
        assert one_line(sluice_here(["worker"], pg_url(), monkeypatch, capsys)) == \
            "sluice: REDIS_URL: not a URL Redis can be reached at (redis://[:password@]host:6379/0)\n"


@pytest.mark.parametrize("role", ["api", "worker"])
def test_api_and_worker_refuse_to_start_without_a_secret_key(role: str, db_engine) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_SECRET_KEY", "SLUICE_SECRET_KEY_FILE")}
    env.update(DATABASE_URL=pg_url(), SLUICE_METRICS_PORT="0", PORT=str(free_port()))
    result = subprocess.run([sys.executable, "-m", "shared.cli.main", role], env=env, capture_output=True, text=True,
                            timeout=60)
    assert one_line(result).startswith("sluice: SLUICE_SECRET_KEY or SLUICE_SECRET_KEY_FILE must be set")


def test_generate_key_needs_no_database_and_prints_a_usable_key() -> None:
    result = sluice(["secrets", "generate-key"], f"postgresql://127.0.0.1:{free_port()}/nowhere")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    from shared.config import Settings

    box = Settings.from_env({"DATABASE_URL": pg_url(), "SLUICE_SECRET_KEY": key}).secret_box
    assert box.open(box.seal("a-secret-of-16-chars")) == "a-secret-of-16-chars"
