"""Regular expressions of payload schemas (``pattern``, ``patternProperties``) on RE2.

Python's ``re`` backtracks: ``^(a+)+$`` against ``"aaaa…a!"`` runs for ever while holding the GIL. RE2
matches in time linear in the text and refuses what needs backtracking (look-around, back-references),
which is refused when the job is written. RE2's syntax is close to the ECMA-262 regular expressions JSON
Schema names: ``\\d``, ``\\w`` and ``\\s`` are ASCII, ``$`` matches only at the very end.
"""

from __future__ import annotations

from typing import Any

import re2

MAX_PATTERN_CHARS = 1000
# Memory RE2 may use for one compiled pattern; a pattern that needs more is refused. RE2 keeps its own
# cache of the 128 patterns compiled last, so this also bounds that cache (128 x 256 KiB).
MAX_PATTERN_MEMORY = 256 * 1024

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_PATTERN_MEMORY
_OPTIONS.log_errors = False


class PatternError(ValueError):
    """A pattern RE2 cannot run; ``str()`` says why, for the job's owner."""


def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (search with ``.search(text)``), or ``PatternError``."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else str(exc)
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(f"not supported ({text}; look-around and back-references are not)") from None


def pattern_cost(compiled: Any) -> int:
    """Approximate bytes held by a compiled pattern (its program, both directions)."""
    return 64 * (int(compiled.programsize) + int(compiled.reverseprogramsize)) + 2 * len(compiled.pattern)
