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

    assert Settings.from_env({"SLUICE_SECRET_KEY": key}).secret_box.open(
        Settings.from_env({"SLUICE_SECRET_KEY": key}).secret_box.seal("a-secret-of-16-chars")) == "a-secret-of-16-chars"
