"""The process roles, each a function of its command-line arguments that returns an exit code.

The one module of ``shared`` that imports the process packages (``api``, ``worker``, ``scheduler``); the
import-linter contracts in ``pyproject.toml`` declare this exception. Each import sits inside its function,
so that a command that runs no role (``sluice keys list``) loads neither Flask nor Dramatiq.
"""

from __future__ import annotations

from collections.abc import Callable

RoleEntry = Callable[[list[str]], int]


def serve_api(argv: list[str]) -> int:
    from api.server import main

    return main(argv)


def run_worker(argv: list[str]) -> int:
    from worker.main import main

    return main(argv)


def run_scheduler(argv: list[str]) -> int:
    from scheduler.main import main

    return main(argv)
