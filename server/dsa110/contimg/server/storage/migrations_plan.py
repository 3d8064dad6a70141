"""Which migrations a database needs, the same rule for every engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..domain.errors import StartupError

Migration = tuple[int, str, str]  # (version, name, SQL)


def pending(migrations: Sequence[Migration], done: Iterable[int]) -> list[Migration]:
    """The migrations not yet applied, in order; refuses a database a newer release migrated (its
    tables may mean things this code would get wrong)."""
    applied = set(done)
    known = max(version for version, _, _ in migrations)
    if applied and max(applied) > known:
        raise StartupError(
            f"the database has schema version {max(applied)}, newer than this server's {known} "
            "(a newer release migrated it): run that release, or a copy of the database made for this one"
        )
    return [m for m in migrations if m[0] not in applied]
