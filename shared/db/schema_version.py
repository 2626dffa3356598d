"""Is the database's schema as new as the code? Alembic's revision in the database against the migrations
shipped with this release.

A schema *behind* the code (no schema yet, or an older revision) is refused: the processes would fail on
their first statement. A revision this release does not know is taken as *ahead*: a newer release migrated
first, as a rolling upgrade does, and older processes keep serving until they are replaced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from shared.db.migrate import alembic_config


@dataclass(frozen=True)
class ShippedSchema:
    """The migrations of this release: their heads and every revision below them."""

    heads: frozenset[str]
    older: frozenset[str]

    @classmethod
    @functools.cache  # the migration files of an installed release do not change while it runs
    def load(cls) -> ShippedSchema:
        script = ScriptDirectory.from_config(alembic_config(""))
        heads = frozenset(script.get_heads())
        older = frozenset(rev.revision for rev in script.walk_revisions()) - heads
        return cls(heads=heads, older=older)

    def lag(self, revisions: frozenset[str]) -> str | None:
        """``None`` if a database at ``revisions`` serves this release, else why not and the fix."""
        if not revisions:
            return "the database has no Sluice schema yet; run `sluice db upgrade`"
        if self.heads <= revisions or not revisions <= self.older | self.heads:
            return None  # at the newest revision, or ahead of this release
        return (f"the schema is at revision {', '.join(sorted(revisions))}, older than this release's "
                f"{', '.join(sorted(self.heads))}; run `sluice db upgrade`")

    def verify(self, connection: Connection) -> str | None:
        """``lag`` of the connected database (for ``shared.db.engine.check_database``)."""
        return self.lag(current_revisions(connection))


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revisions recorded in the database (none when it was never migrated)."""
    if connection.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return frozenset()
    return frozenset(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
