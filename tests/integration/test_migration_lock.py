"""``sluice db upgrade`` run by several pods at once (each pod's init container) on an empty database:
every one exits 0, writes JSON log lines only, and the schema is applied once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, PG_DB_NAME, pg_url

BIN = Path(sys.executable).parent
RACERS = 3


def test_concurrent_upgrades_of_an_empty_database_all_succeed(pg_engine: sa.Engine) -> None:
    name = f"{PG_DB_NAME}_migrace"
    url = pg_url().rsplit("/", 1)[0] + "/" + name
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        env = {**os.environ, "DATABASE_URL": url}
        racers = [subprocess.Popen([str(BIN / "sluice"), "db", "upgrade"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for _ in range(RACERS)]
        outputs = [(racer.wait(120), racer.stdout.read() if racer.stdout else "") for racer in racers]
        assert all(code == 0 for code, _ in outputs), outputs
        lines = [line for _, output in outputs for line in output.splitlines() if line.strip()]
        events = [json.loads(line)["event"] for line in lines]  # JSON lines only, like every process's
        assert events.count("database is at the newest schema") == RACERS
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            assert conn.execute(sa.text("SELECT to_regclass('runs')")).scalar() == "runs"
        engine.dispose()
        assert len(versions) == 1
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
