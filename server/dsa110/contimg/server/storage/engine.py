"""Which storage engine serves: SQLite (a file, the default) or PostgreSQL (a postgresql:// URL).

Both hand out the same repositories (repositories/protocols.py); the server sees only `Storage`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..domain.errors import DomainError
from ..domain.page_keys import RELOAD_S, PageKey
from ..readcache import ReadCache
from ..repositories.protocols import (
    EventPublisher,
    ImageRepository,
    JobRepository,
    MeasurementSetRepository,
    SourceRepository,
)
from .clock import now_us
from .load import CommitLog, Load

if TYPE_CHECKING:
    from ..config import ServerConfig


class Upkeep(Protocol):
    """What health.py, housekeeping.py and the one-shot commands ask of an engine's database."""

    def fault(self) -> DomainError | None: ...
    async def probe(self) -> None: ...
    async def expire_request_ids(self) -> int: ...
    async def page_token_keys(self) -> tuple[PageKey, ...]: ...
    async def rotate_page_token_key(self, new: bytes, signs_from_us: int) -> tuple[PageKey, ...]: ...
    async def schema_version(self) -> int: ...
    @property
    def description(self) -> str: ...
    # What the metrics read (load.py).
    @property
    def commits(self) -> CommitLog: ...
    def load(self) -> Load: ...
    async def size_bytes(self) -> int: ...


class Storage(Protocol):
    @property
    def db(self) -> Upkeep: ...

    # Read-only properties, so that each engine's own repository classes satisfy them.
    @property
    def measurement_sets(self) -> MeasurementSetRepository: ...
    @property
    def images(self) -> ImageRepository: ...
    @property
    def sources(self) -> SourceRepository: ...
    @property
    def jobs(self) -> JobRepository: ...

    @property
    def read_cache(self) -> ReadCache: ...
    @property
    def description(self) -> str: ...
    def version(self) -> Hashable | None: ...
    async def open(self) -> None: ...
    async def start_background(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...


def open_storage(config: ServerConfig, publisher: EventPublisher) -> Storage:
    """The engine `config.database` names, not yet opened."""
    cache_bytes = config.read_cache_mb << 20
    if config.postgres:
        from .postgres.database import PostgresSettings
        from .postgres.storage import PostgresStorage

        return PostgresStorage(
            PostgresSettings(
                config.database,
                pool_max=max(2, config.readers * 2),
                statement_timeout_s=config.statement_timeout_s,
                q3c=config.q3c,
                read_barrier=config.read_barrier,
            ),
            publisher,
            read_cache_bytes=cache_bytes,
        )
    from .sqlite.database import SQLiteSettings
    from .sqlite.storage import SQLiteStorage

    return SQLiteStorage(
        SQLiteSettings(
            path=config.database_path,
            readers=config.readers,
            synchronous=config.synchronous.upper(),
            statement_timeout_s=config.statement_timeout_s,
            write_process=config.write_process,
            inline_reads=config.inline_reads,
        ),
        publisher,
        read_cache_bytes=cache_bytes,
    )


@asynccontextmanager
async def opened_database(config: ServerConfig) -> AsyncIterator[Upkeep]:
    """The database alone (migrated, no repositories, no serving): for the one-shot commands."""
    db: Any
    if config.postgres:
        from .postgres.database import Database as PostgresDatabase
        from .postgres.database import PostgresSettings

        db = PostgresDatabase(PostgresSettings(config.database, pool_min=1, pool_max=1, q3c=config.q3c))
    else:
        from .sqlite.database import Database as SQLiteDatabase
        from .sqlite.database import SQLiteSettings

        db = SQLiteDatabase(SQLiteSettings(config.database_path))
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def migrate_only(config: ServerConfig) -> str:
    """`contimg-server migrate`: bring the database to this release's schema; a line saying where."""
    async with opened_database(config) as db:
        return f"schema version {await db.schema_version()} at {db.description}"


async def rotate_page_token_key(config: ServerConfig, new: bytes, grace_s: float) -> str:
    """`contimg-server rotate-page-token-key`: add `new` to the database's key set (page_keys.py)."""
    signs_from = now_us() + int(grace_s * 1e6)
    async with opened_database(config) as db:
        keys = await db.rotate_page_token_key(new, signs_from)
    when = datetime.fromtimestamp(signs_from / 1e6, UTC).isoformat(timespec="seconds")
    return (
        f"page-token key {new.hex()[:8]}... added at {db.description}: accepted by every replica within "
        f"{RELOAD_S:.0f} s, signing from {when}; {len(keys) - 1} older key(s) still accepted"
    )
