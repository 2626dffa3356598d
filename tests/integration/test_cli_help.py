"""Every ``sluice … --help`` prints its usage and exits 0 starting nothing: no database or API is
contacted (both point at closed ports, where any attempt would fail the command) and no file is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.cli.api_client import package_version
from shared.cli.main import command_paths
from tests.integration.process_support import free_port

COMMANDS = [" ".join(path) for path in command_paths()]


def test_the_tree_holds_every_command() -> None:
    expected = {"", "api", "worker", "scheduler", "dev", "db", "db upgrade", "keys", "keys create", "keys list",
                "keys revoke", "jobs", "jobs list", "jobs get", "jobs trigger", "jobs enable", "jobs disable",
                "runs", "runs list", "runs get", "runs watch", "runs cancel", "runs replay", "dlq", "dlq list",
                "dlq replay", "secrets", "secrets generate-key", "secrets reencrypt"}
    assert set(COMMANDS) == expected


# One interpreter runs every ``--help`` in turn (one start-up instead of one per command): any command that
# started something would connect and fail, hang until the timeout, or leave a file behind.
EVERY_HELP = """
import contextlib, io, json, sys
from shared.cli.main import main
results = {}
for command in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*command.split(), "--help"])
        except SystemExit as exc:
            code = exc.code
    results[command] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_every_help_exits_0_and_starts_nothing(tmp_path: Path) -> None:
    home, work, metrics = tmp_path / "home", tmp_path / "work", tmp_path / "metrics"
    for folder in (home, work, metrics):
        folder.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PG", "PROMETHEUS"))},
           "HOME": str(home), "PROMETHEUS_MULTIPROC_DIR": str(metrics), "DATABASE_URL": f"postgresql://sluice@127.0.0.1:{free_port()}/sluice",
           "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SLUICE_URL": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run([sys.executable, "-c", EVERY_HELP, json.dumps(COMMANDS)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for command, (code, out, err) in results.items():
        assert code == 0, (command, err)
        assert out.startswith(f"usage: sluice {command}".rstrip()), (command, out[:200])
        assert err == "", (command, err)
    assert sorted(results) == sorted(COMMANDS)
    assert list(work.iterdir()) == [] and list(home.iterdir()) == [] and list(metrics.iterdir()) == []


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "shared.cli.main", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == f"sluice {package_version()}\n"
