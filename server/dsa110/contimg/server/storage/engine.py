"""Which storage engine serves: SQLite (a file, the default) or PostgreSQL (a postgresql:// URL).

Both hand out the same repositories (repositories/protocols.py); the server sees only `Storage`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Protocol

from ..domain.errors import DomainError
from ..readcache import ReadCache
from ..repositories.protocols import (
    EventPublisher,
    ImageRepository,
    JobRepository,
    MeasurementSetRepository,
    SourceRepository,
)

if TYPE_CHECKING:
    from ..config import ServerConfig


class Upkeep(Protocol):
    """What health.py and housekeeping.py ask of an engine's database."""

    def fault(self) -> DomainError | None: ...
    async def probe(self) -> None: ...
    async def expire_request_ids(self) -> int: ...


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
    def page_token_secret(self) -> bytes: ...
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


async def migrate_only(config: ServerConfig) -> str:
    """`contimg-server migrate`: bring the database to this release's schema; a line saying where."""
    if config.postgres:
        from .postgres.database import Database as PostgresDatabase
        from .postgres.database import PostgresSettings

        pg = PostgresDatabase(PostgresSettings(config.database, pool_min=1, pool_max=1, q3c=config.q3c))
        await pg.open()
        try:
            return f"schema version {await pg.schema_version()} at {pg.description}"
        finally:
            await pg.close()
    from .sqlite.database import Database as SQLiteDatabase
    from .sqlite.database import SQLiteSettings

    lite = SQLiteDatabase(SQLiteSettings(config.database_path))
    await lite.open()
    try:
        return f"schema version {await lite.schema_version()} at {config.database_path}"
    finally:
        await lite.close()
