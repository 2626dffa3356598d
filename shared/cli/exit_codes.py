"""The exit codes of ``sluice``, which scripts may rely on (documented in docs/cli.md).

Every failure prints one line on stderr; the code says which kind it was.
"""

from __future__ import annotations

OK = 0
RUN_NOT_COMPLETED = 1  # a watched run ended in another status than completed (or a process role failed)
USAGE = 2  # a wrong command line or setting, or a database that cannot serve (unreachable, not migrated)
NOT_FOUND = 3  # the job or run does not exist in the key's project
AUTH = 4  # the key is missing, unknown or revoked, or lacks the scope
UNAVAILABLE = 5  # the API could not be reached, or it failed (5xx, or an answer that is not Sluice's)
REFUSED = 6  # the API understood the request and refused it (400, 409, 413, 415, 422, 429)
INTERRUPTED = 130  # Ctrl-C

